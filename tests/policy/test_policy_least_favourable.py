"""The multiplicity promise at its least favourable point, with a band that separates δ from 2δ.

Scenario: the true error is flat at 1.005·α, so EVERY threshold is bad and any deployed
version is a breach. Each stream walks the first five declared checkpoints as the product does:
``checkpoint_for_ledger_size`` gives (j, δ_j); a freshly retrained model brings fresh scores
and fresh errors on the whole ledger (independent attempts: the union bound is nearly tight,
the worst case for multiplicity); ``threshold_grid`` + ``certify`` run on it and
``decide_promotion`` deploys the candidate. A stream breaches when it ever deploys a version;
the promise is P(breach) ≤ δ.

Setting: α = 2%, confidence 0.90 (δ = 10%, a legal task setting), checkpoints at 300, 600,
1,200, 2,400 and 4,800 ledger cases (Σ δ_j = 31/32·δ). δ = 10% rather than the default 5%
because the streams a band needs grow like 1/δ: at 5% the same power takes 3,000 streams
(about a minute), at 10% 1,500. The mechanism under test (δ_j = δ/2^j, one attempt per
checkpoint) does not depend on δ; ``scripts/breach_rates.py --delta 0.05`` gives the rates
at the default (correct 4.2%, 2δ 7.7%, no split 15.3%).

Expected breach rates here (exact binomial given the real grid, ``scripts/breach_rates.py
--delta 0.1``): correct policy 7.6%; certification at 2δ 15.7%; full δ at every checkpoint
30.2%.

Band for STREAMS = 1,500 (scipy.stats.binom):
* upper edge 187 breaches (12.5%) = the 99.9% quantile of Binomial(1,500, δ): any policy that
  keeps the promise fails with probability ≤ 8.7e-4; the correct policy (mean 114) < 1e-10;
* lower edge 75 = δ/2 of the streams: fewer means the streams no longer probe the boundary
  (error drifted below α, certification never running); P(correct policy < 75) = 1.9e-5;
* the broken copies (means 236 and 453) land in the band with probability 2.2e-4 and < 1e-50.

So the false-failure probability of the band for the correct policy is < 1e-4, and the
mutation tests below (CI runs them every time) show the same band rejects both broken
copies. Fixed seed: the outcome is deterministic; the probabilities say how much the verdict
depends on the seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from service.policy import (
    certify,
    checkpoint_for_ledger_size,
    checkpoint_schedule,
    decide_promotion,
    multiplicity,
    threshold_grid,
)

ALPHA, DELTA = 0.02, 0.10
TRUE_ERROR = 1.005 * ALPHA  # just above α: every threshold is bad
CHECKPOINTS = 5
STREAMS = 1500
RECENT = 2000  # recent-traffic scores for the grid (the product's RECENT_CASES)
SEED = 20250611
UPPER = int(stats.binom.ppf(0.999, STREAMS, DELTA))
LOWER = int(STREAMS * DELTA / 2)

_checkpoint_delta = multiplicity.checkpoint_delta

#: Deliberately broken copies of the δ the product spends at a checkpoint.
BROKEN: dict[str, Callable[..., float]] = {
    "certify at 2δ": lambda index, delta, rho=0.5: 2 * _checkpoint_delta(index, delta, rho),
    "no δ split (full δ at every checkpoint)": lambda index, delta, rho=0.5: delta,
}


def breached_streams(
    streams: int = STREAMS, *, alpha: float = ALPHA, delta: float = DELTA, seed: int = SEED
) -> int:
    """Number of streams that ever deploy a version (with a flat error > α all are bad)."""
    rng = np.random.default_rng(seed)
    error = 1.005 * alpha
    sizes = [cp.ledger_size for cp in checkpoint_schedule(alpha, delta)[:CHECKPOINTS]]
    breached = 0
    for _ in range(streams):
        active = None
        last: int | None = None
        for n in sizes:
            due = checkpoint_for_ledger_size(n, alpha=alpha, delta=delta, last_attempted=last)
            assert due is not None
            last, delta_j = due
            # A fresh model: new scores for traffic and ledger, new errors on the ledger.
            recent = rng.random(RECENT)
            scores = rng.random(n)
            correct = rng.random(n) >= error
            grid = threshold_grid(recent, scores, alpha=alpha, delta=delta_j)
            cand = certify(
                scores, correct, grid, alpha=alpha, delta=delta_j, coverage_scores=recent
            )
            if decide_promotion(active, cand).promote:
                active = cand
                break  # a bad version is live: this stream has breached
        breached += active is not None
    return breached


def test_band_arithmetic() -> None:
    """The error probabilities stated in the module docstring hold."""
    assert (UPPER, LOWER) == (187, 75)
    assert stats.binom.sf(UPPER, STREAMS, DELTA) < 1e-3
    assert stats.binom.sf(UPPER, STREAMS, 0.0763) < 1e-10
    assert stats.binom.cdf(LOWER - 1, STREAMS, 0.0763) < 2e-5
    assert stats.binom.cdf(UPPER, STREAMS, 0.157) < 3e-4
    assert stats.binom.cdf(UPPER, STREAMS, 0.302) < 1e-50


def test_correct_policy_stays_in_band() -> None:
    k = breached_streams()
    print(
        f"\ncorrect policy: {k}/{STREAMS} streams breached ({k / STREAMS:.1%}); "
        f"band [{LOWER}, {UPPER}]"
    )
    assert LOWER <= k <= UPPER, (k, LOWER, UPPER)


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_policy_fails_the_band(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Mutation check: the same band rejects a policy that spends more δ than it has."""
    monkeypatch.setattr(multiplicity, "checkpoint_delta", BROKEN[name])
    due = checkpoint_for_ledger_size(600, alpha=ALPHA, delta=DELTA, last_attempted=1)
    assert due is not None and due[1] != _checkpoint_delta(2, DELTA)  # the patch is in force
    k = breached_streams()
    print(f"\n{name}: {k}/{STREAMS} streams breached ({k / STREAMS:.1%}); upper edge {UPPER}")
    assert k > UPPER, (name, k, UPPER)
