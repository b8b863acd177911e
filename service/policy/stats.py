"""Exact binomial tools and weighted estimates.

Everything is exact (Clopper–Pearson / binomial CDF via scipy). Wilson or normal bounds are
deliberately absent: at α = 0.02 with a few hundred cases they under-cover (SPEC §4.3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


def _check(k: int, n: int, confidence: float) -> None:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def clopper_pearson_upper(k: int, n: int, confidence: float) -> float:
    """One-sided exact upper bound u with P(Binom(n, u) <= k) = 1 − confidence.

    ``clopper_pearson_upper(k, n, 1 − δ) <= α`` is equivalent to ``binom_p_value(k, n, α) <= δ``.
    """
    _check(k, n, confidence)
    if k >= n:
        return 1.0
    return float(stats.beta.ppf(confidence, k + 1, n - k))


def clopper_pearson_lower(k: int, n: int, confidence: float) -> float:
    """One-sided exact lower bound l with P(Binom(n, l) >= k) = 1 − confidence (0 if k = 0)."""
    _check(k, n, confidence)
    if k == 0:
        return 0.0
    return float(stats.beta.ppf(1.0 - confidence, k, n - k + 1))


def binom_p_value(k: int, n: int, alpha: float) -> float:
    """p-value of H0: risk > α given k errors in n (BinomCDF(k; n, α)); 1.0 when n = 0."""
    if n <= 0:
        return 1.0
    return float(stats.binom.cdf(k, n, alpha))


def min_cases_to_pass(alpha: float, delta: float) -> int:
    """Smallest n for which 0 errors in n gives p = (1 − α)^n <= δ.

    No threshold with fewer ledger cases above it can ever be accepted (149 at α=.02, δ=.05).
    """
    if not (0.0 < alpha < 1.0 and 0.0 < delta < 1.0):
        raise ValueError("alpha and delta must be in (0, 1)")
    n = max(1, math.ceil(math.log(delta) / math.log1p(-alpha)))
    # Guard against floating-point error at the boundary in both directions.
    while n > 1 and binom_p_value(0, n - 1, alpha) <= delta:
        n -= 1
    while binom_p_value(0, n, alpha) > delta:
        n += 1
    return n


@dataclass(frozen=True)
class WeightedRate:
    """A Hájek estimate with its interval, for display to people."""

    estimate: float
    lower: float
    upper: float
    n: int  # labelled cases used
    n_effective: float  # Kish effective sample size


def weighted_rate(
    values: Sequence[float] | np.ndarray,
    inclusion_probs: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> WeightedRate:
    """Inverse-probability-weighted (Hájek) rate of a 0/1 outcome over all traffic.

    Each labelled case is weighted by 1/π_i, its probability of having been labelled, so the
    estimate speaks for all traffic rather than the review queue (SPEC §4.6).
    Interval: two-sided Clopper–Pearson (beta quantiles, which accept non-integer counts) on the
    Kish effective sample size n_eff = (Σw)²/Σw² with k_eff = p̂·n_eff. With equal weights it is
    the exact interval; with unequal weights it is the usual design-effect approximation.
    """
    v = np.asarray(values, dtype=float)
    p = np.asarray(inclusion_probs, dtype=float)
    if v.shape != p.shape or v.ndim != 1:
        raise ValueError("values and inclusion_probs must be 1-D and of equal length")
    if np.any((p <= 0) | (p > 1)):
        raise ValueError("inclusion probabilities must be in (0, 1]")
    if np.any((v < 0) | (v > 1)):
        raise ValueError("values must be in [0, 1]")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    if v.size == 0:
        return WeightedRate(float("nan"), 0.0, 1.0, 0, 0.0)
    w = 1.0 / p
    est = float(np.sum(w * v) / np.sum(w))
    n_eff = float(np.sum(w) ** 2 / np.sum(w**2))
    k_eff = est * n_eff
    tail = (1.0 - confidence) / 2.0
    lower = 0.0 if k_eff <= 0 else float(stats.beta.ppf(tail, k_eff, n_eff - k_eff + 1))
    upper = 1.0 if k_eff >= n_eff else float(stats.beta.ppf(1 - tail, k_eff + 1, n_eff - k_eff))
    return WeightedRate(est, lower, upper, int(v.size), n_eff)
