"""Training-data profile for data-quality checks (docs/learning.md).

Why: a case whose values lie far outside what the active model was trained on must go to
review with reason ``invalid_input`` whatever its confidence, and per-field missing rates /
unseen categories are tracked over time. The profile is computed once at training time and
stored as JSON next to the model.

``out_of_range`` rule (per field, missing values never count; booleans never count):

* number: outside ``[min - 3*S, max + 3*S]`` where ``S`` is the training inter-quartile range,
  or ``max - min`` when the IQR is 0, or ``1.0`` when the field was constant.
* category: a value never seen in training, but only for a *closed* vocabulary: at most
  ``CLOSED_MAX_CATEGORIES`` distinct values, every one seen at least ``CLOSED_MIN_COUNT`` times
  on average (rows / distinct >= that), and the full set recorded. Open fields (ids, product
  codes) see new values all the time and are never flagged.
* text: longer than ``10 * max(longest training text, 10)`` characters.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.ml.frame import (
    Field,
    Row,
    field_types,
    number_value,
    to_boolean,
    to_number,
    to_text,
)

MAX_STORED_CATEGORIES = 1000
CLOSED_MAX_CATEGORIES = 50
CLOSED_MIN_COUNT = 5
RANGE_MARGIN_SPREADS = 3.0
TEXT_LENGTH_FACTOR = 10
PSI_BINS = 10
PSI_EPS = 1e-4


def _quantiles(values: np.ndarray, qs: Sequence[float]) -> list[float]:
    return [float(v) for v in np.quantile(values, qs)] if len(values) else [math.nan] * len(qs)


def _num_values(rows: Sequence[Row], name: str, typ: str) -> np.ndarray:
    conv = to_boolean if typ == "boolean" else to_number
    return np.array([conv(r.get(name)) for r in rows], dtype=np.float64).reshape(-1)


def _clean(x: float) -> float | None:
    """JSON has no NaN: store None instead."""
    return None if math.isnan(x) else x


@dataclass
class DataProfile:
    """Per-field summary of the training rows; ``fields[name]`` is a JSON-ready dict."""

    n_rows: int
    fields: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, "n_rows": self.n_rows, "fields": self.fields}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataProfile:
        return cls(n_rows=int(data["n_rows"]), fields=dict(data["fields"]))


# Alias used by callers that think of the profile as "per-field profiles".
FieldProfile = DataProfile


def build_profile(rows: Sequence[Row], fields: Sequence[Field]) -> DataProfile:
    """Summarise training rows: missing rate, numeric range/quantiles/PSI bins, category
    frequencies, text length quantiles."""
    n = len(rows)
    out: dict[str, dict[str, Any]] = {}
    for name, typ in field_types(fields):
        prof: dict[str, Any] = {"type": typ}
        if typ in ("number", "boolean"):
            vals = _num_values(rows, name, typ)
            present = vals[~np.isnan(vals)]
            prof["missing_rate"] = float(1 - len(present) / n) if n else 0.0
            if len(present):
                p01, q1, med, q3, p99 = _quantiles(present, [0.01, 0.25, 0.5, 0.75, 0.99])
                edges = np.unique(np.quantile(present, np.linspace(0, 1, PSI_BINS + 1))[1:-1])
                prof.update(
                    min=float(present.min()),
                    max=float(present.max()),
                    p01=p01,
                    q1=q1,
                    median=med,
                    q3=q3,
                    p99=p99,
                    psi_edges=[float(e) for e in edges],
                    psi_fractions=_bin_fractions(present, edges),
                    present=len(present),
                )
        elif typ == "category":
            vals_c = [to_text(r.get(name)) for r in rows]
            seen = [v for v in vals_c if isinstance(v, str)]
            counts = Counter(seen)
            prof["missing_rate"] = float(1 - len(seen) / n) if n else 0.0
            prof["n_distinct"] = len(counts)
            # Good–Turing: the share of values seen once estimates how often a new case
            # brings a value the training never saw (ids: every case; a closed set: ~none).
            prof["singleton_share"] = (
                sum(1 for c in counts.values() if c == 1) / len(seen) if seen else 0.0
            )
            prof["complete"] = len(counts) <= MAX_STORED_CATEGORIES
            prof["frequencies"] = {
                k: c / len(seen) for k, c in counts.most_common(MAX_STORED_CATEGORIES)
            }
            prof["closed"] = bool(
                prof["complete"]
                and 0 < len(counts) <= CLOSED_MAX_CATEGORIES
                and len(seen) / len(counts) >= CLOSED_MIN_COUNT
            )
        else:
            lengths = np.array(
                [len(v) for v in (to_text(r.get(name)) for r in rows) if isinstance(v, str)],
                dtype=np.float64,
            )
            prof["missing_rate"] = float(1 - len(lengths) / n) if n else 0.0
            if len(lengths):
                p50, p90, p99 = _quantiles(lengths, [0.5, 0.9, 0.99])
                prof.update(len_p50=p50, len_p90=p90, len_p99=p99, len_max=float(lengths.max()))
        out[name] = prof
    return DataProfile(n_rows=n, fields=out)


def _homogeneity_p(expected_counts: np.ndarray, actual_counts: np.ndarray) -> float:
    """Chi-square test of homogeneity of two binned samples (bins empty in both dropped)."""
    keep = (expected_counts + actual_counts) > 0
    table = np.vstack([expected_counts[keep], actual_counts[keep]])
    if table.shape[1] < 2 or table.sum(axis=1).min() <= 0:
        return 1.0
    from scipy import stats  # ~80 MB: loaded where a drift test runs, not at import

    return float(stats.chi2_contingency(table, correction=False).pvalue)


def _bin_fractions(values: np.ndarray, edges: np.ndarray | list[float]) -> list[float]:
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    return [float(c) for c in counts / max(len(values), 1)]


def numeric_bounds(prof: dict[str, Any]) -> tuple[float, float] | None:
    """The accepted ``[low, high]`` interval of a number field, None if never observed."""
    if "min" not in prof:
        return None
    spread = prof["q3"] - prof["q1"]
    if spread <= 0:
        spread = prof["max"] - prof["min"]
    if spread <= 0:
        spread = 1.0
    margin = RANGE_MARGIN_SPREADS * spread
    return prof["min"] - margin, prof["max"] + margin


def out_of_range(profile: DataProfile, row: Row) -> list[str]:
    """Names of fields whose value in ``row`` lies far outside the training data."""
    bad: list[str] = []
    for name, prof in profile.fields.items():
        value = row.get(name)
        typ = prof["type"]
        if typ == "number":
            x = number_value(value)
            bounds = numeric_bounds(prof)
            if bounds is not None and not math.isnan(x) and not bounds[0] <= x <= bounds[1]:
                bad.append(name)
        elif typ == "category":
            v = to_text(value)
            if isinstance(v, str) and prof.get("closed") and v not in prof["frequencies"]:
                bad.append(name)
        elif typ == "text":
            v = to_text(value)
            limit = TEXT_LENGTH_FACTOR * max(prof.get("len_max", 0.0), 10.0)
            if isinstance(v, str) and len(v) > limit:
                bad.append(name)
    return bad


def range_checker(profile: DataProfile) -> RangeChecker:
    """:func:`out_of_range` with every bound computed once: the predict hot path calls it
    per case, and recomputing the bounds per call cost more than the rest of routing."""
    checks: list[tuple[str, str, Any]] = []
    for name, prof in profile.fields.items():
        typ = prof["type"]
        if typ == "number":
            bounds = numeric_bounds(prof)
            if bounds is not None:
                checks.append((name, typ, bounds))
        elif typ == "category" and prof.get("closed"):
            checks.append((name, typ, frozenset(prof["frequencies"])))
        elif typ == "text":
            checks.append((name, typ, TEXT_LENGTH_FACTOR * max(prof.get("len_max", 0.0), 10.0)))
    return RangeChecker(checks)


_FLOAT_OR_NONE = frozenset({float, type(None)})
#: Below this many rows :meth:`RangeChecker.many` checks them one at a time.
MANY_MIN_ROWS = 16


class RangeChecker:
    """:func:`out_of_range` for one profile: a row at a time, or a batch's rows at once
    (:meth:`many`, the same answers; its number fields are compared as NumPy columns)."""

    def __init__(self, checks: list[tuple[str, str, Any]]) -> None:
        self.checks = checks

    def __call__(self, row: Row) -> list[str]:
        bad: list[str] = []
        for name, typ, rule in self.checks:
            value = row.get(name)
            if value is None:
                continue
            # Validated input holds floats and strings: converted only when it does not.
            if typ == "number":
                x = value if type(value) is float else number_value(value)
                if not math.isnan(x) and not rule[0] <= x <= rule[1]:
                    bad.append(name)
            elif typ == "category":
                if _category_out(value, rule):
                    bad.append(name)
            elif _text_out(value, rule):
                bad.append(name)
        return bad

    def many(self, rows: Sequence[Row]) -> list[list[str]]:
        """``[self(row) for row in rows]``, for a batch: per row, a Python loop over the
        fields cost more than scoring the row (bench/README.md, "Batch predict"). A few rows
        (a single predict) go row by row: a NumPy column per field costs more there."""
        if len(rows) < MANY_MIN_ROWS:
            return [self(row) for row in rows]
        bad_by_field: list[tuple[str, np.ndarray]] = []
        for name, typ, rule in self.checks:
            column = [row.get(name) for row in rows]
            if typ == "number":
                if not _FLOAT_OR_NONE.issuperset(map(type, column)):
                    return [self(row) for row in rows]  # values the converters must read
                x = np.array(column, dtype=np.float64)  # None -> NaN: never out of range
                with np.errstate(invalid="ignore"):
                    bad = (x < rule[0]) | (x > rule[1])
            elif typ == "category":
                bad = np.fromiter(
                    (v is not None and _category_out(v, rule) for v in column),
                    dtype=bool,
                    count=len(column),
                )
            else:
                bad = np.fromiter(
                    (v is not None and _text_out(v, rule) for v in column),
                    dtype=bool,
                    count=len(column),
                )
            bad_by_field.append((name, bad))
        flags: list[list[str]] = [[] for _ in rows]
        for name, bad in bad_by_field:
            for i in np.flatnonzero(bad).tolist():
                flags[i].append(name)
        return flags


def _category_out(value: Any, known: frozenset[str]) -> bool:
    v = value if type(value) is str else to_text(value)
    return isinstance(v, str) and v not in known


def _text_out(value: Any, limit: float) -> bool:
    v = value if type(value) is str else to_text(value)
    return isinstance(v, str) and len(v) > limit


def drift_report(profile: DataProfile, rows: Sequence[Row]) -> dict[str, dict[str, Any]]:
    """Compare recent rows with the training profile, per field: missing-rate change,
    PSI (numbers, training decile bins), unseen-category rate, mean text length."""
    n = len(rows)
    report: dict[str, dict[str, Any]] = {}
    for name, prof in profile.fields.items():
        typ = prof["type"]
        entry: dict[str, Any] = {"type": typ, "n": n}
        if typ in ("number", "boolean"):
            vals = _num_values(rows, name, typ)
            present = vals[~np.isnan(vals)]
            rate = float(1 - len(present) / n) if n else 0.0
            if "psi_edges" in prof and len(present):
                expected = np.asarray(prof["psi_fractions"]) + PSI_EPS
                actual = np.asarray(_bin_fractions(present, prof["psi_edges"])) + PSI_EPS
                entry["psi"] = float(np.sum((actual - expected) * np.log(actual / expected)))
                # Is the shift real? Chi-square of homogeneity on the same bins (profiles
                # written before the training count was kept count as 100 rows: cautious).
                train_n = int(prof.get("present") or 100)
                entry["psi_p_value"] = _homogeneity_p(
                    np.asarray(prof["psi_fractions"]) * train_n,
                    np.asarray(_bin_fractions(present, prof["psi_edges"])) * len(present),
                )
            else:
                entry["psi"] = None
                entry["psi_p_value"] = None
            bounds = numeric_bounds(prof) if typ == "number" else None
            entry["out_of_range_rate"] = (
                float(np.mean((present < bounds[0]) | (present > bounds[1])))
                if bounds is not None and len(present)
                else 0.0
            )
        elif typ == "category":
            vals_c = [to_text(r.get(name)) for r in rows]
            seen = [v for v in vals_c if isinstance(v, str)]
            rate = float(1 - len(seen) / n) if n else 0.0
            known = prof["frequencies"]
            entry["unseen_rate"] = (
                float(sum(v not in known for v in seen) / len(seen)) if seen else 0.0
            )
            entry["unseen_is_exact"] = bool(prof["complete"])
            # What the same traffic would show: profiles written before it was kept say 0.
            entry["expected_unseen_rate"] = float(prof.get("singleton_share") or 0.0)
        else:
            lengths = [len(v) for v in (to_text(r.get(name)) for r in rows) if isinstance(v, str)]
            rate = float(1 - len(lengths) / n) if n else 0.0
            entry["mean_length"] = _clean(float(np.mean(lengths))) if lengths else None
        entry["missing_rate_train"] = prof["missing_rate"]
        entry["missing_rate"] = rate
        entry["missing_rate_change"] = rate - prof["missing_rate"]
        report[name] = entry
    return report
