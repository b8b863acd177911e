"""Exact binomial tools and weighted estimates.

The unweighted tools are exact (Clopper–Pearson / binomial CDF via scipy). Wilson or normal
bounds are deliberately absent: at α = 0.02 with a few hundred cases they under-cover
(docs/stats.md). The weighted interval for people is Clopper–Pearson on an effective sample:
exact for equal weights, its coverage under skewed weights checked by simulation.

The beta quantiles come from ``scipy.special.betaincinv``: the values ``scipy.stats.beta.ppf``
gives, bit for bit (both are Boost's inverse incomplete beta; tests/policy/test_policy_stats.py
holds them equal). The live watch computes them in the web process when a reviewer labels an
audited automatic answer; ``scipy.stats`` would cost that process ~80 MB and that decision the
0.6–2 s of its import. ``tandem serve`` loads ``scipy.special`` (~18 MB) before it forks its
workers (docs/operations.md, "Memory" under "Deploy").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np


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
    from scipy.special import betaincinv

    return float(betaincinv(k + 1, n - k, confidence))


def clopper_pearson_lower(k: int, n: int, confidence: float) -> float:
    """One-sided exact lower bound l with P(Binom(n, l) >= k) = 1 − confidence (0 if k = 0)."""
    _check(k, n, confidence)
    if k == 0:
        return 0.0
    from scipy.special import betaincinv

    return float(betaincinv(k, n - k + 1, 1.0 - confidence))


def binom_p_value(k: int, n: int, alpha: float) -> float:
    """p-value of H0: risk > α given k errors in n (BinomCDF(k; n, α)); 1.0 when n = 0."""
    if n <= 0:
        return 1.0
    from scipy import stats

    return float(stats.binom.cdf(k, n, alpha))


@lru_cache(maxsize=1024)
def min_cases_to_pass(alpha: float, delta: float) -> int:
    """Smallest n for which 0 errors in n gives p = (1 − α)^n <= δ.

    No threshold with fewer ledger cases above it can ever be accepted (149 at α=.02, δ=.05).
    Cached: every grid and every checkpoint schedule asks for it with the same few pairs.
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
    n_effective: float  # effective sample size behind the interval (n when weights are equal)


def _effective_size(v: np.ndarray, w: np.ndarray, fallback: float) -> tuple[float, float]:
    """(p̂, n*) of a weighted sample: n* = p̂(1 − p̂) / v̂, the size of a simple random sample
    with the same variance, v̂ = Σ w²(v − p̂)² / (Σw)² the linearised (with-replacement)
    variance of the Hájek estimate. ``fallback`` when p̂ is 0 or 1 (v̂ = 0). At most len(v)."""
    total = float(np.sum(w))
    p = float(np.sum(w * v) / total)
    var = float(np.sum(w * w * (v - p) ** 2)) / total**2
    n_star = p * (1.0 - p) / var if 0.0 < p < 1.0 and var > 0.0 else fallback
    return p, min(n_star, float(v.size))


def weighted_rate(
    values: Sequence[float] | np.ndarray,
    inclusion_probs: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> WeightedRate:
    """Inverse-probability-weighted (Hájek) rate of a 0/1 outcome over all traffic.

    Each labelled case is weighted by 1/π_i, its probability of having been labelled, so the
    estimate speaks for all traffic rather than the review queue (docs/stats.md).

    Interval (two-sided, ``confidence``): Clopper–Pearson beta quantiles on an effective
    sample, as Korn & Graubard (1998) do for survey proportions, with the one-case step of
    Fay & Feuer (1997) for skewed weights:

    * n* = p̂(1 − p̂)/v̂ from the design variance (not Kish's (Σw)²/Σw², which assumes the
      outcome varies alike in every weight class and covered 88% at nominal 95% when
      heavily weighted audit cases carried the errors), capped at n;
    * upper: one more error on the heaviest case that has none (p̂⁺, n*⁺ of that sample),
      Beta⁻¹(1 − t; n*⁺p̂⁺, n*⁺(1 − p̂⁺) + 1); lower: one error fewer on the heaviest case
      that has one (p̂⁻, n*⁻), Beta⁻¹(t; n*⁻p̂⁻ + 1, n*⁻(1 − p̂⁻)); t = (1 − confidence)/2.
      One 1/π-weighted case is the smallest step the estimate can take, so the interval
      reaches past the next possible value on both sides, as the exact binomial interval does.

    With equal weights this is exactly the Clopper–Pearson interval. Coverage with skewed
    weights is checked by simulation in tests/policy/test_policy_stats.py and measured in
    docs/stats.md (scripts/interval_coverage.py).
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
    from scipy.special import betaincinv

    w = 1.0 / p
    kish = float(np.sum(w) ** 2 / np.sum(w**2))
    est, n_eff = _effective_size(v, w, kish)
    tail = (1.0 - confidence) / 2.0
    if est >= 1.0:
        upper = 1.0
    else:
        up = v.copy()
        up[int(np.argmax(w * (1.0 - v)))] = 1.0
        p_up, n_up = _effective_size(up, w, kish)
        upper = float(betaincinv(n_up * p_up, n_up * (1.0 - p_up) + 1.0, 1.0 - tail))
    if est <= 0.0:
        lower = 0.0
    else:
        down = v.copy()
        down[int(np.argmax(w * v))] = 0.0
        p_down, n_down = _effective_size(down, w, kish)
        lower = float(betaincinv(n_down * p_down + 1.0, n_down * (1.0 - p_down), tail))
    return WeightedRate(est, lower, upper, int(v.size), n_eff)
