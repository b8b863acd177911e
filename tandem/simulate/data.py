"""Reading a labelled CSV for a backtest: field inference, value conversion, the task.

Inference looks only at the values (never at column names), so any labelled export works:
``NA`` and empty cells are missing; a column whose values are all ``true``/``false`` is a
boolean; all finite numbers is a number; long, wordy, mostly distinct strings are text; the
remaining strings are categories. A column with a missing value is optional.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MISSING = frozenset({"", "NA"})
BOOLEAN_VALUES = {"true": True, "false": False}
#: Text when the average value is at least this long and has several words ...
TEXT_MIN_MEAN_LENGTH = 30
TEXT_MIN_MEAN_WORDS = 4.0
#: ... or when nearly every value is distinct and multi-word (free-form short answers).
TEXT_MIN_DISTINCT_SHARE = 0.5
TEXT_MIN_WORDS_IF_DISTINCT = 2.0
DEFAULT_TASK_NAME = "simulation"
TASK_NAME_RE = re.compile(r"[^a-z0-9_-]+")


def is_missing(cell: str | None) -> bool:
    return cell is None or cell.strip() in MISSING


def _is_number(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


def infer_type(values: Sequence[str | None]) -> str:
    """The field type of one column from its raw cells (missing cells ignored)."""
    present = [v.strip() for v in values if v is not None and not is_missing(v)]
    if not present:
        return "category"
    if all(v.lower() in BOOLEAN_VALUES for v in present):
        return "boolean"
    if all(_is_number(v) for v in present):
        return "number"
    mean_len = sum(len(v) for v in present) / len(present)
    mean_words = sum(len(v.split()) for v in present) / len(present)
    distinct = len(set(present)) / len(present)
    if mean_len >= TEXT_MIN_MEAN_LENGTH and mean_words >= TEXT_MIN_MEAN_WORDS:
        return "text"
    if distinct >= TEXT_MIN_DISTINCT_SHARE and mean_words >= TEXT_MIN_WORDS_IF_DISTINCT:
        return "text"
    return "category"


def infer_fields(
    header: Sequence[str], raw_rows: Sequence[dict[str, str]], label: str
) -> list[dict[str, Any]]:
    """Task field specs for every column but ``label``, in file order."""
    fields: list[dict[str, Any]] = []
    for name in header:
        if name == label:
            continue
        column = [r.get(name) for r in raw_rows]
        fields.append(
            {
                "name": name,
                "type": infer_type(column),
                "required": not any(is_missing(v) for v in column),
            }
        )
    return fields


def convert(cell: str | None, kind: str) -> Any:
    """One raw cell as the JSON value an application would send (None when missing)."""
    if is_missing(cell):
        return None
    assert cell is not None
    if kind == "number":
        number = float(cell)
        return number if math.isfinite(number) else None
    if kind == "boolean":
        lowered = cell.strip().lower()
        if lowered not in BOOLEAN_VALUES:
            raise ValueError(f"not a boolean: {cell!r}")
        return BOOLEAN_VALUES[lowered]
    return cell


@dataclass
class Dataset:
    """Rows of a labelled CSV, ready to replay: inputs, true labels, the task definition."""

    path: Path
    label_column: str
    fields: list[dict[str, Any]]
    labels: list[str]
    inputs: list[dict[str, Any]]
    truth: list[str]
    dropped_unlabelled: int = 0
    task: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.truth)


def _task_name(path: Path) -> str:
    name = TASK_NAME_RE.sub("-", path.stem.lower()).strip("-_")
    return (name or DEFAULT_TASK_NAME)[:100]


def load_dataset(
    path: Path,
    label: str,
    *,
    task: dict[str, Any] | None = None,
    rows: int | None = None,
) -> Dataset:
    """Read ``path``; fields and labels come from ``task`` where it gives them, else inferred.

    ``rows`` keeps the first N labelled rows of the file (before any shuffling). Rows without a
    label are dropped (counted in ``dropped_unlabelled``): a backtest needs the truth.
    """
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = list(reader.fieldnames or [])
        raw = list(reader)
    if label not in header:
        raise ValueError(f"label column {label!r} not in {path.name} (columns: {header})")
    labelled = [r for r in raw if not is_missing(r.get(label))]
    dropped = len(raw) - len(labelled)
    if rows is not None:
        labelled = labelled[:rows]
    if not labelled:
        raise ValueError(f"{path.name} has no labelled rows")
    task = dict(task or {})
    fields = task.get("fields") or infer_fields(header, labelled, label)
    missing_cols = [f["name"] for f in fields if f["name"] not in header]
    if missing_cols:
        raise ValueError(f"task fields not in the CSV: {missing_cols}")
    truth = [str(r[label]).strip() for r in labelled]
    labels = [str(x) for x in task.get("labels") or sorted(set(truth))]
    unknown = sorted(set(truth) - set(labels))
    if unknown:
        raise ValueError(f"label values not in the task's labels: {unknown[:10]}")
    if len(labels) < 2:
        raise ValueError(f"label column {label!r} has fewer than two distinct values")
    types = {f["name"]: f["type"] for f in fields}
    inputs = [{name: convert(r.get(name), kind) for name, kind in types.items()} for r in labelled]
    definition = {
        "name": task.get("name") or _task_name(path),
        "labels": labels,
        "fields": fields,
        "policy": dict(task.get("policy") or {}),
        "review": dict(task.get("review") or {}),
    }
    return Dataset(
        path=path,
        label_column=label,
        fields=fields,
        labels=labels,
        inputs=inputs,
        truth=truth,
        dropped_unlabelled=dropped,
        task=definition,
    )
