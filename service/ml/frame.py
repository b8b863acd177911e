"""Turn JSON-like rows into a DataFrame with explicit dtypes.

Why: building a DataFrame naively from JSON lets pandas guess dtypes, so ``None`` in a
categorical column stays ``None`` (not NaN) and the imputer never sees it as missing; the
spec reports probabilities up to 0.30 off on such rows. Here every field type gets a fixed
dtype and every missing value becomes ``np.nan``. The same scalar converters are used by the
fast predictor (``service.ml.fast``) so both paths see identical values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from service.ml.lazy import lazy_module

if TYPE_CHECKING:
    import pandas as pd
else:  # only rows_to_frame (training, the Pipeline fallback) needs pandas (~85 MB)
    pd = lazy_module("pandas")

Field = Mapping[str, Any]
Row = Mapping[str, Any]

FIELD_TYPES = ("text", "category", "number", "boolean")
_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def is_missing(value: Any) -> bool:
    """True for JSON null and for float NaN (both mean 'no value')."""
    return value is None or (isinstance(value, float) and math.isnan(value))


#: Numbers beyond this magnitude reach the models as missing. The API accepts every finite
#: JSON number, up to ~1.8e308, but the scaler squares deviations from the mean: one
#: 1.7e308 overflowed to infinity, and every later training of its task failed
#: (docs/learning.md, "Numbers too large to learn from"). No quantity a model can learn from
#: is this large; the stored case keeps the value as sent.
MAX_MAGNITUDE = 1e100


def to_number(value: Any) -> float:
    """Number field value -> float, NaN when missing, not convertible or beyond
    :data:`MAX_MAGNITUDE`: what the models read."""
    number = number_value(value)
    return number if -MAX_MAGNITUDE <= number <= MAX_MAGNITUDE else math.nan


def number_value(value: Any) -> float:
    """Number field value -> float as sent (NaN when missing or not convertible): what the
    out-of-range check compares with the training range, so that a number too large to
    learn from is flagged rather than passed over as missing."""
    if is_missing(value):
        return math.nan
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        if isinstance(value, int):  # an integer beyond a double: as far out as one gets
            return math.inf if value > 0 else -math.inf
        return math.nan


def to_boolean(value: Any) -> float:
    """Boolean field value -> 1.0 / 0.0, NaN when missing or unrecognised."""
    if is_missing(value):
        return math.nan
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return 1.0 if value else 0.0
    if isinstance(value, str):
        low = value.strip().lower()
        if low in _TRUE:
            return 1.0
        if low in _FALSE:
            return 0.0
    return math.nan


def to_category(value: Any) -> Any:
    """Category value -> str, ``np.nan`` when missing (bools and numbers are stringified)."""
    if is_missing(value):
        return np.nan
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_text(value: Any) -> Any:
    """Text value -> str, ``np.nan`` when missing; the pipeline fills "" before TF-IDF."""
    return to_category(value)


def field_types(fields: Iterable[Field]) -> list[tuple[str, str]]:
    """Validate field specs and return ``(name, type)`` pairs in order."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for f in fields:
        name, typ = str(f["name"]), str(f["type"])
        if typ not in FIELD_TYPES:
            raise ValueError(f"field {name!r}: unknown type {typ!r}")
        if name in seen:
            raise ValueError(f"duplicate field {name!r}")
        seen.add(name)
        out.append((name, typ))
    if not out:
        raise ValueError("a task needs at least one field")
    return out


def rows_to_frame(rows: Sequence[Row], fields: Sequence[Field]) -> pd.DataFrame:
    """Build the model input frame: object columns (NaN for missing) for text/category,
    float64 (NaN for missing) for number/boolean. Missing keys count as null; unknown keys
    are ignored."""
    columns: dict[str, pd.Series] = {}
    index = pd.RangeIndex(len(rows))
    for name, typ in field_types(fields):
        values = [row.get(name) for row in rows]
        if typ == "number":
            columns[name] = pd.Series(
                np.fromiter((to_number(v) for v in values), dtype=np.float64, count=len(rows)),
                index=index,
                dtype=np.float64,
            )
        elif typ == "boolean":
            columns[name] = pd.Series(
                np.fromiter((to_boolean(v) for v in values), dtype=np.float64, count=len(rows)),
                index=index,
                dtype=np.float64,
            )
        else:
            arr = np.empty(len(rows), dtype=object)
            arr[:] = [to_category(v) for v in values]
            columns[name] = pd.Series(arr, index=index, dtype=object)
    return pd.DataFrame(columns, index=index)
