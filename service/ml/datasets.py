"""Load the bundled labelled datasets as (rows, labels, fields, label_set) for tests and bench."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

DATASET_DIR = Path(__file__).resolve().parent.parent / "datasets"

# name -> (label column, {column: field type}); columns absent here are numbers.
_SPECS: dict[str, tuple[str, dict[str, str]]] = {
    "credit_data": (
        "Status",
        {"Home": "category", "Marital": "category", "Records": "category", "Job": "category"},
    ),
    "fine_foods": ("score", {"review": "text", "product": "category"}),
    "letter": ("lettr", {}),
}


class Dataset(NamedTuple):
    rows: list[dict[str, Any]]
    labels: list[str]
    fields: list[dict[str, Any]]
    label_set: list[str]


def load_dataset(name: str) -> Dataset:
    """Read ``<name>.csv`` ("NA" = missing) into JSON-like rows with None for missing."""
    label_col, types = _SPECS[name]
    df = pd.read_csv(DATASET_DIR / f"{name}.csv", keep_default_na=False, na_values=["NA"])
    fields = [
        {"name": c, "type": types.get(c, "number"), "required": False}
        for c in df.columns
        if c != label_col
    ]
    rows: list[dict[str, Any]] = []
    for rec in df.drop(columns=[label_col]).to_dict(orient="records"):
        rows.append(
            {
                k: (
                    None
                    if v is None or (isinstance(v, float) and math.isnan(v))
                    else (v.item() if hasattr(v, "item") else v)
                )
                for k, v in rec.items()
            }
        )
    labels = [str(v) for v in df[label_col]]
    label_set = sorted(set(labels))
    return Dataset(rows, labels, fields, label_set)
