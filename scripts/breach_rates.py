"""Expected breach rates of the multiplicity policy at its least favourable point.

Companion of tests/policy/test_policy_least_favourable.py: the test simulates streams with the
real ``certify``; this script computes what it should see, without simulating errors. With a
flat true error p > α every threshold is bad, the errors are independent of the scores, and
the fixed-sequence walk certifies iff its first grid point passes. Given the n₁ ledger cases
above that point (from the real ``threshold_grid``), the pass probability is exactly
P(Binomial(n₁, p) ≤ k*), k* = the most errors with BinomCDF(k; n₁, α) ≤ δ_j. Attempts at
different checkpoints are independent (a fresh model each time), so a stream breaches with
probability 1 − Π_j (1 − q_j). n₁ varies a little with the random grid: averaged over
``--grids`` draws.

    .venv/bin/python scripts/breach_rates.py --delta 0.1 --streams 1500   # the test's setting
    .venv/bin/python scripts/breach_rates.py --delta 0.05 --streams 3000  # the default δ

Prints, per policy variant (correct, certification at 2δ, full δ at every checkpoint), the
per-checkpoint pass probabilities and the stream breach rate, then the band of the test.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np
from scipy import stats

from service.policy import checkpoint_schedule, min_cases_to_pass, threshold_grid
from service.policy.certify import START_LEDGER_SHARE


def k_star(n: int, alpha: float, delta: float) -> int:
    """Most errors among n that still pass (−1: none passes)."""
    ok = np.flatnonzero(stats.binom.cdf(np.arange(n + 1), n, alpha) <= delta)
    return int(ok[-1]) if ok.size else -1


def pass_probability(
    n_ledger: int,
    alpha: float,
    delta_j: float,
    error: float,
    rng: np.random.Generator,
    grids: int,
    recent: int = 2000,
) -> float:
    cache: dict[int, float] = {}
    total = 0.0
    for _ in range(grids):
        scores = rng.random(n_ledger)
        grid = threshold_grid(rng.random(recent), scores, alpha=alpha, delta=delta_j)
        if not grid:
            continue
        n1 = int(np.sum(scores >= grid[0]))
        if n1 not in cache:
            k = k_star(n1, alpha, delta_j)
            cache[n1] = float(stats.binom.cdf(k, n1, error)) if k >= 0 else 0.0
        total += cache[n1]
    return total / grids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--alpha", type=float, default=0.02)
    ap.add_argument("--delta", type=float, default=0.05)
    ap.add_argument("--error", type=float, default=None, help="flat true error (1.005·α)")
    ap.add_argument("--checkpoints", type=int, default=5)
    ap.add_argument("--streams", type=int, default=3000, help="streams in the test's band")
    ap.add_argument("--grids", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    error = a.error if a.error is not None else 1.005 * a.alpha
    rng = np.random.default_rng(a.seed)
    sched = checkpoint_schedule(a.alpha, a.delta)[: a.checkpoints]
    variants: dict[str, Callable[[float], float]] = {
        "correct (δ_j = δ/2^j)": lambda d: d,
        "certify at 2δ": lambda d: 2 * d,
        "no split (δ at every checkpoint)": lambda d: a.delta,
    }
    print(
        f"α = {a.alpha}, δ = {a.delta}, flat true error {error:.5f}; checkpoints "
        f"{[cp.ledger_size for cp in sched]}"
    )
    print("| policy | pass probability per checkpoint | stream breach rate |")
    print("|---|---|---|")
    rates = {}
    for name, spend in variants.items():
        q = [
            pass_probability(cp.ledger_size, a.alpha, spend(cp.delta), error, rng, a.grids)
            for cp in sched
        ]
        rate = 1.0 - math.prod(1.0 - x for x in q)
        rates[name] = rate
        print(f"| {name} | {', '.join(f'{x:.4f}' for x in q)} | {rate:.4f} |")
    r = a.streams
    upper = int(stats.binom.ppf(0.999, r, a.delta))
    lower = int(r * a.delta / 2)
    print(
        f"\nband for {r} streams: [{lower}, {upper}] breaches "
        f"(P(Binomial({r}, δ) > {upper}) = {stats.binom.sf(upper, r, a.delta):.2e})"
    )
    for name, rate in rates.items():
        p_in = stats.binom.cdf(upper, r, rate) - stats.binom.cdf(lower - 1, r, rate)
        print(f"  {name}: expected {rate * r:.0f} breaches, P(inside the band) = {p_in:.2e}")
    n_min = [min_cases_to_pass(a.alpha, a.delta / 2**j) for j in (1, 2, 3)]
    print(
        f"(n_min at δ/2, δ/4, δ/8: {n_min}; first share of the ledger tested: {START_LEDGER_SHARE})"
    )


if __name__ == "__main__":
    main()
