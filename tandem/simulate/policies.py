"""Reference policies and the proper measures of the promise, from recorded scores (pure).

Everything here works on what the replay recorded: per arrival the score and suggestion the
deployed version gave, and per version its scores on EVERY dataset row (the data is fully
labelled). Nothing is re-trained: the baselines run on the same stream and the same versions
as Tandem, so the comparison isolates the automation rule.

* ``fixed``: automate when the score is at least 0.9, whenever a model exists.
* ``naive``: at each chunk, the lowest threshold whose OBSERVED error on the human-labelled
  cases seen so far (that the current version was not trained on) is within target — a
  point estimate with no confidence bound (docs/policy.md: it breaks the promise).
* ``oracle``: the lowest threshold whose REALISED error over the stream is within target,
  chosen in hindsight. For final-quarter automation the oracle is refitted on the final
  quarter alone (the best any single threshold could do there), the stricter yardstick.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.policy import clopper_pearson_lower, clopper_pearson_upper

FIXED_THRESHOLD = 0.9


def lowest_threshold_within(
    scores: np.ndarray | Sequence[float], correct: np.ndarray | Sequence[bool], alpha: float
) -> float | None:
    """The lowest τ (one of the scores) with error rate among ``s >= τ`` at most ``alpha``.

    Ties are kept together (a threshold cannot split equal scores). None when no threshold
    qualifies (or there are no scores). NaN scores (no model) are ignored.
    """
    s = np.asarray(scores, dtype=float)
    c = np.asarray(correct, dtype=bool)
    keep = np.isfinite(s)
    s, c = s[keep], c[keep]
    if s.size == 0:
        return None
    order = np.argsort(-s, kind="stable")
    ss, cc = s[order], c[order]
    errors = np.cumsum(~cc)
    counts = np.arange(1, ss.size + 1)
    boundary = np.r_[ss[:-1] > ss[1:], True]
    good = boundary & (errors <= alpha * counts + 1e-9)
    if not good.any():
        return None
    return float(ss[int(np.nonzero(good)[0].max())])


def rule_auto(
    scores: np.ndarray, pred: np.ndarray, threshold: float | None, label_thresholds: dict | None
) -> np.ndarray:
    """Which rows a deployed rule (τ plus per-label τ) answers automatically."""
    s = np.asarray(scores, dtype=float)
    if threshold is None:
        return np.zeros(s.size, dtype=bool)
    taus = np.full(s.size, float(threshold))
    for label, tau in (label_thresholds or {}).items():
        taus[np.asarray(pred, dtype=object) == label] = float(tau)
    return np.isfinite(s) & (s >= taus)


@dataclass
class VersionScores:
    """One version's top score and suggested label on every dataset row, and which rows it
    was trained on (those never count towards its true error)."""

    scores: np.ndarray
    pred: np.ndarray
    trained: np.ndarray  # bool per dataset row


def true_error(
    vs: VersionScores,
    truth: np.ndarray,
    threshold: float | None,
    label_thresholds: dict | None = None,
) -> dict[str, Any]:
    """Error of the rule (version, τ) on all rows it was not trained on."""
    auto = rule_auto(vs.scores, vs.pred, threshold, label_thresholds) & ~vs.trained
    n = int(auto.sum())
    k = int((vs.pred[auto] != truth[auto]).sum())
    held = int((~vs.trained).sum())
    return {
        "threshold": threshold,
        "auto_rows": n,
        "errors": k,
        "true_error": k / n if n else None,
        "coverage": n / held if held else 0.0,
        "held_out_rows": held,
    }


@dataclass
class Stream:
    """What the replay recorded, in arrival order (one entry per case)."""

    rows: np.ndarray  # dataset row of each arrival
    chunk: np.ndarray  # chunk index of each arrival
    version: np.ndarray  # active model version at arrival (0: none)
    score: np.ndarray  # top-class probability at arrival (NaN: no model)
    pred: np.ndarray  # suggested label (None: no model)
    truth: np.ndarray  # true label (label column)
    human: np.ndarray  # the simulated reviewer's label (None: never reviewed)
    labelled_chunk: np.ndarray  # chunk in which the human label arrived (-1: never)
    auto: np.ndarray  # Tandem answered automatically
    chunk_rules: list[dict[str, Any]] = field(default_factory=list)  # Tandem's rule per chunk

    def __len__(self) -> int:
        return int(self.rows.size)


@dataclass
class PolicyRun:
    """One policy's decisions on the stream and the rules it deployed."""

    name: str
    auto: np.ndarray
    rules: list[tuple[int, float | None, dict[str, float]]]
    labels_spent: int
    notes: str = ""


def final_quarter(n: int) -> slice:
    return slice(n - max(1, n // 4), n)


def fixed_policy(stream: Stream, threshold: float = FIXED_THRESHOLD) -> PolicyRun:
    has_model = stream.version > 0
    auto = has_model & np.isfinite(stream.score) & (stream.score >= threshold)
    versions = sorted({int(v) for v in stream.version[has_model]})
    rules: list[tuple[int, float | None, dict[str, float]]] = [(v, threshold, {}) for v in versions]
    return PolicyRun(f"fixed {threshold:g}", auto, rules, int((~auto).sum()))


def naive_policy(stream: Stream, versions: dict[int, VersionScores], alpha: float) -> PolicyRun:
    """Per chunk, the lowest threshold whose observed error on held-out human labels seen
    before the chunk is within ``alpha`` (no bound, no minimum sample)."""
    auto = np.zeros(len(stream), dtype=bool)
    rules: list[tuple[int, float | None, dict[str, float]]] = []
    seen: set[tuple[int, float | None]] = set()
    memo: dict[tuple[int, int], float | None] = {}
    labelled = stream.labelled_chunk >= 0
    for c in np.unique(stream.chunk):
        idx = np.nonzero(stream.chunk == c)[0]
        v = int(stream.version[idx[0]])
        if v == 0 or v not in versions:
            continue
        vs = versions[v]
        known = labelled & (stream.labelled_chunk < c)
        rows = stream.rows[known]
        held = ~vs.trained[rows]
        rows, human = rows[held], stream.human[known][held]
        key = (v, int(rows.size))
        if key not in memo:
            memo[key] = lowest_threshold_within(vs.scores[rows], vs.pred[rows] == human, alpha)
        tau = memo[key]
        if tau is None:
            continue
        auto[idx] = np.isfinite(stream.score[idx]) & (stream.score[idx] >= tau)
        if (v, tau) not in seen:
            seen.add((v, tau))
            rules.append((v, tau, {}))
    return PolicyRun("naive", auto, rules, int((~auto).sum()))


def oracle_policy(stream: Stream, alpha: float) -> tuple[PolicyRun, float | None, float | None]:
    """Hindsight: one threshold over the whole stream; and the final quarter's own."""
    correct = stream.pred == stream.truth
    tau = lowest_threshold_within(stream.score, correct, alpha)
    auto = np.zeros(len(stream), dtype=bool)
    if tau is not None:
        auto = np.isfinite(stream.score) & (stream.score >= tau)
    fq = final_quarter(len(stream))
    tau_fq = lowest_threshold_within(stream.score[fq], correct[fq], alpha)
    return PolicyRun("oracle", auto, [], int((~auto).sum())), tau, tau_fq


def quarter_automation(stream: Stream, tau: float | None) -> float:
    fq = final_quarter(len(stream))
    if tau is None:
        return 0.0
    s = stream.score[fq]
    return float(np.mean(np.isfinite(s) & (s >= tau)))


def tandem_policy(stream: Stream, labels_spent: int) -> PolicyRun:
    rules: list[tuple[int, float | None, dict[str, float]]] = []
    seen: set[tuple[int, float | None, tuple[tuple[str, float], ...]]] = set()
    for rule in stream.chunk_rules:
        if rule.get("state") != "automating" or not rule.get("version"):
            continue
        lt = dict(rule.get("label_thresholds") or {})
        key = (int(rule["version"]), rule.get("threshold"), tuple(sorted(lt.items())))
        if key not in seen:
            seen.add(key)
            rules.append((key[0], key[1], lt))
    return PolicyRun("tandem", stream.auto.copy(), rules, labels_spent)


def evaluate(
    run: PolicyRun,
    stream: Stream,
    versions: dict[int, VersionScores],
    alpha: float,
    confidence: float,
    *,
    oracle_quarter: float | None = None,
) -> dict[str, Any]:
    """The measures of one policy: automation (all, final quarter, share of the oracle's),
    realised error of its automatic answers with a Clopper-Pearson interval, and the TRUE
    error of every rule it deployed."""
    n = len(stream)
    auto = run.auto
    wrong = auto & (stream.pred != stream.truth)
    k, m = int(wrong.sum()), int(auto.sum())
    delta = 1.0 - confidence
    fq = final_quarter(n)
    fq_auto = float(auto[fq].mean()) if n else 0.0
    rule_errors = []
    for v, tau, lt in run.rules:
        if v not in versions:
            continue
        te = true_error(versions[v], stream_truth_by_row(stream, versions[v]), tau, lt)
        rule_errors.append({"version": v, **te, "label_thresholds": lt or None})
    worst = max((r["true_error"] for r in rule_errors if r["true_error"] is not None), default=None)
    breaches = [r for r in rule_errors if r["true_error"] is not None and r["true_error"] > alpha]
    return {
        "automation": m / n if n else 0.0,
        "final_quarter_automation": fq_auto,
        "final_quarter_share_of_oracle": (fq_auto / oracle_quarter if oracle_quarter else None),
        "auto_answers": m,
        "auto_errors": k,
        "realised_error": k / m if m else None,
        "realised_error_interval": (
            [
                clopper_pearson_lower(k, m, 1 - delta / 2),
                clopper_pearson_upper(k, m, 1 - delta / 2),
            ]
            if m
            else None
        ),
        "realised_exceeded": bool(m and k / m > alpha),
        "labels_spent": run.labels_spent,
        "deployed_rules": len(rule_errors),
        "deployed_true_error_max": worst,
        "deployed_breaches": len(breaches),
        "deployed_exceeded": bool(breaches),
        "rules": rule_errors,
    }


def stream_truth_by_row(stream: Stream, vs: VersionScores) -> np.ndarray:
    """True labels indexed by dataset row (the stream holds every row exactly once)."""
    truth = np.empty(vs.scores.size, dtype=object)
    truth[stream.rows] = stream.truth
    return truth


def cumulative_error(auto: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    """Realised error of automatic answers so far, at each arrival (NaN before the first)."""
    m = np.cumsum(auto)
    k = np.cumsum(wrong & auto)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m > 0, k / np.maximum(m, 1), np.nan)


def rolling_rate(flags: np.ndarray, window: int) -> np.ndarray:
    """Share of ``flags`` over the last ``window`` arrivals (fewer at the start)."""
    x = np.asarray(flags, dtype=float)
    c = np.cumsum(np.r_[0.0, x])
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)
