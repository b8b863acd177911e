"""Whether a certification attempt can succeed, judged without its evidence (docs/policy.md,
"Readiness").

Every attempt spends the next slice of δ (δ/2, δ/4, …), pass or fail. Spent on a model that
cannot pass yet, a slice is gone for good and every later attempt must clear a higher bar:
the backtests' runs that never automated had burnt δ/2 and δ/4 on checkpoints reached before
the model was good enough. So an attempt is made only when it is likely to pass — judged from
what the test never looks at: the candidate's *out-of-fold* predictions on its own training
cases (disjoint from the audit ledger) and the ledger's *scores* (never its labels). Until
something is certified in a ledger epoch, the decision when to test is therefore independent
of the labels it tests, and P(any attempt passes a bad threshold) ≤ Σ_a δ_a ≤ δ
(`tests/policy/test_policy_least_favourable.py` runs it with attempts at every size and with
this check). A widening attempt also reads what the running rule automates and the widening
cap — functions of earlier passes on the same audit sample; the earlier schedules had the
same channel through the cap and the grid (docs/policy.md, "Readiness").

The estimate: for each step τ of the walk, n ledger cases lie above it; the out-of-fold cases
in the same top share of scores (matched by rank, not by score: the fold models are fitted on
two thirds of the data and are less confident than the refitted model) hold e errors in m.
With the error rate's Jeffreys posterior Beta(w·e + ½, w·(m − e) + ½), w = OOF_WEIGHT, the
number of errors the ledger would show is beta-binomial, and the step passes iff it is at
most k*, the largest k with BinomCDF(k; n, α) ≤ δ_j. The walk passes a prefix, so step j is
reached with probability at most the smallest pass probability up to j; that upper bound is
what the check uses (and reports), an optimistic approximation the weight above offsets.

The same estimate picks where the walk *starts*. Fixed-sequence testing may follow any order
fixed before the labels are read; starting at a strict point that needs an error-free region
(100 cases, no error, at α = 5%) ends most walks at their first step, while a laxer start
with more cases tolerates a few errors. The start is the point from which the widest useful
point is reached with probability ≥ MIN_PASS_PROBABILITY.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

#: Attempt only when the widest step that would widen automation passes with at least this
#: probability: a failure halves δ for every later attempt, waiting costs time (measured
#: choice, docs/policy.md "Readiness").
MIN_PASS_PROBABILITY = 0.7
#: Each out-of-fold case counts as this many cases of evidence about the refitted model: the
#: fold models are not the refitted one, and the best-looking of a hundred grid points is
#: picked (a winner's curse), so the estimate is less certain than its count suggests.
OOF_WEIGHT = 0.5
#: Fewer out-of-fold cases than this say too little: no estimate, and the group does not call
#: for an attempt.
MIN_OOF_CASES = 50


@dataclass(frozen=True)
class Readiness:
    """The verdict, and the numbers behind it that the report and the dashboard show."""

    ready: bool
    reason: str
    #: the step the verdict is about: the widest one likely to pass, else the most likely one
    threshold: float | None = None
    #: where the walk starts (ready only): the test runs on the grid from this point on
    start_threshold: float | None = None
    coverage: float = 0.0
    estimated_error: float | None = None
    oof_cases: int = 0
    oof_errors: int = 0
    ledger_cases: int = 0  # ledger cases above the threshold
    pass_probability: float = 0.0
    #: ledger size at which that step would pass with MIN_PASS_PROBABILITY (None: never)
    ledger_needed: int | None = None
    #: False when there were too few out-of-fold cases to judge at all
    estimated: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def max_errors_to_pass(n: int, alpha: float, delta: float) -> int:
    """k*: the most errors among n cases that still pass BinomCDF(k; n, α) ≤ δ (−1: none)."""
    return int(_k_star(np.array([n]), alpha, delta)[0])


def _k_star(n: np.ndarray, alpha: float, delta: float) -> np.ndarray:
    from scipy import stats  # ~80 MB: loaded in the training job that uses it

    n = np.asarray(n, dtype=int)
    k = stats.binom.ppf(delta, n, alpha).astype(int)  # smallest k with CDF ≥ δ
    k = np.where(stats.binom.cdf(k, n, alpha) > delta, k - 1, k)
    k = np.where(stats.binom.cdf(k + 1, n, alpha) <= delta, k + 1, k)
    return np.where(n > 0, k, -1)


def pass_probabilities(
    n: np.ndarray, errors: np.ndarray, oof_n: np.ndarray, *, alpha: float, delta: float
) -> np.ndarray:
    """P(the exact binomial test passes on n fresh cases) given e errors in m similar cases
    (each weighted OOF_WEIGHT), element-wise."""
    from scipy import stats

    n = np.asarray(n, dtype=int)
    k_star = _k_star(n, alpha, delta)
    a = OOF_WEIGHT * np.asarray(errors, dtype=float) + 0.5
    b = OOF_WEIGHT * (np.asarray(oof_n, dtype=float) - np.asarray(errors, dtype=float)) + 0.5
    p = stats.betabinom.cdf(np.maximum(k_star, 0), np.maximum(n, 1), a, b)
    return np.where(k_star >= 0, p, 0.0)


def pass_probability(n: int, errors: int, oof_n: int, *, alpha: float, delta: float) -> float:
    """P(the exact binomial test passes on n fresh cases) given e errors in m similar cases."""
    return float(
        pass_probabilities(
            np.array([n]), np.array([errors]), np.array([oof_n]), alpha=alpha, delta=delta
        )[0]
    )


#: The largest ledger :func:`_ledger_needed` considers (beyond it: "more than this").
LEDGER_SEARCH_LIMIT = 100_000


def _ledger_needed(
    share: float,
    errors: int,
    oof_n: int,
    *,
    alpha: float,
    delta: float,
    limit: int = LEDGER_SEARCH_LIMIT,
) -> int | None:
    """Smallest ledger size (doubling search, then bisection) at which a region holding
    ``share`` of it passes with MIN_PASS_PROBABILITY; None if none up to ``limit``."""

    def ok(size: int) -> bool:
        n = math.floor(share * size)
        return pass_probability(n, errors, oof_n, alpha=alpha, delta=delta) >= (
            MIN_PASS_PROBABILITY
        )

    hi = 64
    while not ok(hi):
        hi *= 2
        if hi > limit:
            return None
    lo = hi // 2
    while hi - lo > max(1, hi // 100):
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def assess(
    oof_scores: Sequence[float] | np.ndarray,
    oof_correct: Sequence[bool] | np.ndarray,
    ledger_scores: Sequence[float] | np.ndarray,
    grid: Sequence[float],
    coverage_scores: Sequence[float] | np.ndarray,
    *,
    alpha: float,
    delta: float,
    current_coverage: float = 0.0,
    max_coverage: float | None = None,
) -> Readiness:
    """Readiness of one certification group, and where its walk should start.

    ``oof_scores`` are the candidate's out-of-fold top-class scores for this group (−inf for
    cases outside it) with ``oof_correct``; ``ledger_scores`` and ``grid`` (every testable
    point, strict → lax) are what :func:`service.policy.certify` will test (−inf outside the
    group); ``coverage_scores`` the group's recent traffic. Points wider than
    ``max_coverage`` (the widening cap) are worth nothing. The start is the point from which
    the walk reaches the widest useful point with probability ≥ MIN_PASS_PROBABILITY; ready
    iff that point automates more than ``current_coverage``.
    """
    oof = np.asarray(oof_scores, dtype=float)
    ok = np.asarray(oof_correct, dtype=bool)
    ledger = np.sort(np.asarray(ledger_scores, dtype=float))
    recent = np.sort(np.asarray(coverage_scores, dtype=float))
    taus = np.asarray(list(grid), dtype=float)
    if taus.size == 0:
        return Readiness(False, "no threshold has enough audited cases above it to be tested")
    finite = int(np.isfinite(oof).sum())
    if finite < MIN_OOF_CASES:
        # No estimate: this group does not call for an attempt (another group may; it is
        # then tested from the default start). When no group has one, the caller attempts
        # at every due size as before readiness existed.
        return Readiness(
            False,
            f"only {finite} cross-validated cases of this group: no estimate",
            oof_cases=finite,
            estimated=False,
        )
    order = np.argsort(-oof, kind="stable")  # best first; −inf last
    errors_top = np.concatenate([[0], np.cumsum(~ok[order])])
    n_total = ledger.size
    n = (ledger.size - np.searchsorted(ledger, taus, side="left")).astype(int)
    cov = (recent.size - np.searchsorted(recent, taus, side="left")) / max(recent.size, 1)
    # Rank matching within the group: the same top share of its open ledger cases and of
    # its out-of-fold cases (−inf entries belong to other groups or are blocked).
    ledger_open = max(int(np.isfinite(ledger).sum()), 1)
    m = np.clip(np.round(n / ledger_open * finite).astype(int), 1, finite)
    e = errors_top[m].astype(int)
    p = pass_probabilities(n, e, m, alpha=alpha, delta=delta)
    useful = cov > current_coverage + 1e-12
    if max_coverage is not None:
        useful &= cov <= max_coverage + 1e-12

    def step(j: int, reached: float, start: int | None = None) -> Readiness:
        return Readiness(
            False,
            "",
            threshold=float(taus[j]),
            start_threshold=None if start is None else float(taus[start]),
            coverage=float(cov[j]),
            estimated_error=(int(e[j]) + 0.5) / (int(m[j]) + 1.0),
            oof_cases=int(m[j]),
            oof_errors=int(e[j]),
            ledger_cases=int(n[j]),
            pass_probability=float(reached),
        )

    best: tuple[float, float, int, int] | None = None  # (coverage, reached, j, start)
    for start in np.flatnonzero(p >= MIN_PASS_PROBABILITY):
        reached = np.minimum.accumulate(p[start:])
        fine = np.flatnonzero((reached >= MIN_PASS_PROBABILITY) & useful[start:])
        if fine.size == 0:
            continue
        j = int(start + fine[-1])  # coverage grows along the walk: the last is the widest
        candidate = (float(cov[j]), float(reached[j - start]), j, int(start))
        if best is None or candidate[:2] > best[:2]:
            best = candidate
    if best is not None:
        found = step(best[2], best[1], best[3])
        return replace(
            found,
            ready=True,
            reason=f"the top {found.coverage:.0%} of traffic (cross-validated error "
            f"{found.estimated_error:.1%} on {found.oof_cases} cases) would pass on "
            f"{found.ledger_cases} audited cases with probability {found.pass_probability:.2f}",
        )
    if useful.any():
        j = int(np.flatnonzero(useful)[np.argmax(p[useful])])
    else:
        j = int(np.argmax(p))
    likeliest = step(j, float(p[j]))
    if not useful.any():
        if max_coverage is not None and max_coverage <= current_coverage:
            reason = (
                f"automation may not widen beyond the running {current_coverage:.0%} yet "
                "(the widening cap), so a new threshold would change nothing"
            )
        else:
            cap = "" if max_coverage is None else f" up to the widening cap of {max_coverage:.0%}"
            reason = (
                "no region the audited cases could test automates more than the running "
                f"{current_coverage:.0%}{cap}: the narrowest testable one is wider than "
                "automation may grow now, or no region has enough audited cases yet"
            )
        return replace(likeliest, reason=reason)
    share = int(n[j]) / max(n_total, 1)
    needed = _ledger_needed(share, int(e[j]), int(m[j]), alpha=alpha, delta=delta)
    est = likeliest.estimated_error or 0.0
    if needed is not None:
        need = f"about {needed:,} audited cases would be needed"
    elif est >= alpha:
        need = "its error is not under the target: a better model is needed, not more audits"
    else:
        need = (
            f"more than {LEDGER_SEARCH_LIMIT:,} audited cases would be needed: its error is "
            "too close to the target"
        )
    reason = (
        f"the best region (top {likeliest.coverage:.0%} of traffic, cross-validated error "
        f"{est:.1%} against a target of {alpha:.1%}) would pass on a ledger of {n_total:,} "
        f"audited cases (the size this attempt is due at) with probability only "
        f"{likeliest.pass_probability:.2f}; {need}"
    )
    return replace(likeliest, reason=reason, ledger_needed=needed)
