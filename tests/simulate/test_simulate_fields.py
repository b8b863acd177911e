"""Field inference and CSV reading for `tandem simulate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tandem.simulate.data import convert, infer_fields, infer_type, load_dataset

DATASETS = Path(__file__).resolve().parents[2] / "service" / "datasets"


def test_infer_type_by_value_patterns() -> None:
    assert infer_type(["1", "2.5", "NA", "", "-3e2"]) == "number"
    assert infer_type(["true", "False", "NA", "TRUE"]) == "boolean"
    assert infer_type(["rent", "owner", "rent", "parents", "NA"]) == "category"
    # product codes: high cardinality, one token each -> still a category
    assert infer_type([f"B00{i:07d}" for i in range(50)]) == "category"
    long_text = [f"this product was really quite good number {i} would buy" for i in range(20)]
    assert infer_type(long_text) == "text"
    # short but free-form, nearly all distinct, several words -> text
    assert infer_type([f"late delivery {i}" for i in range(30)]) == "text"
    assert infer_type(["NA", "", "NA"]) == "category"  # nothing to go on


def test_convert_missing_and_types() -> None:
    assert convert("NA", "number") is None
    assert convert("", "category") is None
    assert convert("12", "number") == 12.0
    assert convert("True", "boolean") is True
    assert convert("rent", "category") == "rent"
    with pytest.raises(ValueError):
        convert("maybe", "boolean")


def test_infer_fields_excludes_label_and_marks_optional() -> None:
    header = ["y", "age", "home", "note"]
    rows = [
        {"y": "a", "age": "30", "home": "rent", "note": "x"},
        {"y": "b", "age": "NA", "home": "own", "note": "y"},
    ]
    fields = infer_fields(header, rows, "y")
    assert [f["name"] for f in fields] == ["age", "home", "note"]
    assert fields[0] == {"name": "age", "type": "number", "required": False}
    assert fields[1]["required"] is True and fields[1]["type"] == "category"


def test_bundled_datasets_are_inferred_sensibly() -> None:
    credit = load_dataset(DATASETS / "credit_data.csv", "Status", rows=500)
    types = {f["name"]: f["type"] for f in credit.fields}
    assert "Status" not in types
    assert types["Home"] == "category" and types["Income"] == "number"
    assert credit.labels == ["bad", "good"]
    assert len(credit) == 500 and credit.inputs[0]["Seniority"] == 9.0
    foods = load_dataset(DATASETS / "fine_foods.csv", "score", rows=300)
    kinds = {f["name"]: f["type"] for f in foods.fields}
    assert kinds == {"product": "category", "review": "text"}


def test_task_json_overrides_and_unknown_labels(tmp_path: Path) -> None:
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("flag,amount,label\ntrue,1,yes\nfalse,NA,no\nNA,3,\n")
    ds = load_dataset(csv_path, "label", task={"policy": {"min_labels": 10}})
    assert ds.dropped_unlabelled == 1 and len(ds) == 2
    assert ds.fields[0]["type"] == "boolean" and ds.inputs[1] == {"flag": False, "amount": None}
    assert ds.task["policy"] == {"min_labels": 10} and ds.task["name"] == "d"
    with pytest.raises(ValueError, match="not in the task's labels"):
        load_dataset(csv_path, "label", task={"labels": ["yes", "maybe"]})
    with pytest.raises(ValueError, match="label column"):
        load_dataset(csv_path, "nope")
    json.dumps(ds.task)  # the task definition is plain JSON
