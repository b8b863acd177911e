"""The multiplicity promise at its least favourable point, with a band that separates δ from 2δ.

Scenario: the true error is flat at 1.005·α, so EVERY threshold is bad and any deployed
version is a breach. Each stream walks the first five declared steps as the product does:
``due_attempt`` gives the step and the δ of the next attempt (δ/2, δ/4, … per attempt made);
a freshly retrained model brings fresh scores and fresh errors on the whole ledger
(independent attempts: the union bound is nearly tight, the worst case for multiplicity);
``threshold_grid`` + ``certify`` run on it and ``decide_promotion`` deploys the candidate. A
stream breaches when it ever deploys a version; the promise is P(breach) ≤ δ.

Attempting at every step is the least favourable way to choose when to attempt (the product
attempts only when its readiness check, which never reads a ledger label, expects a pass):
that is the band test. Two more runs show why the readiness check must not read the labels:
with the product's check (out-of-fold predictions of an independent sample) the promise
holds; with a check that peeks at the ledger ("attempt when it would pass") the same band
fails, because every attempt then gets the first slice, δ/2.

Setting: α = 2%, confidence 0.90 (δ = 10%, a legal task setting), steps at 298, 447, 671,
1,006 and 1,509 ledger cases (Σ δ_a = 31/32·δ). δ = 10% rather than the default 5% because
the streams a band needs grow like 1/δ: at 5% the same power takes 3,000 streams, at 10%
1,500. The mechanism under test (δ_a = δ/2^a, one attempt per step) does not depend on δ;
``scripts/breach_rates.py --delta 0.05`` gives the rates at the default.

Expected breach rates here (exact binomial given the real grid, ``scripts/breach_rates.py
--delta 0.1``): correct policy 8.5%; certification at 2δ 16.5%; full δ at every step 27.5%.

Band for STREAMS = 1,500 (scipy.stats.binom):
* upper edge 187 breaches (12.5%) = the 99.9% quantile of Binomial(1,500, δ): any policy that
  keeps the promise fails with probability ≤ 8.7e-4; the correct policy (mean 128) < 1e-6;
* lower edge 75 = δ/2 of the streams: fewer means the streams no longer probe the boundary
  (error drifted below α, certification never running); P(correct policy < 75) < 1e-7;
* the broken copies (means 247 and 412) land in the band with probability < 1e-5 and < 1e-44.

So the false-failure probability of the band for the correct policy is < 1e-6, and the
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
    checkpoint_schedule,
    decide_promotion,
    due_attempt,
    multiplicity,
    threshold_grid,
)
from service.policy.readiness import assess

ALPHA, DELTA = 0.02, 0.10
TRUE_ERROR = 1.005 * ALPHA  # just above α: every threshold is bad
CHECKPOINTS = 5
STREAMS = 1500
RECENT = 2000  # recent-traffic scores for the grid (the product's RECENT_CASES)
OOF = 600  # out-of-fold cases the product's readiness check sees
SEED = 20250611
UPPER = int(stats.binom.ppf(0.999, STREAMS, DELTA))
LOWER = int(STREAMS * DELTA / 2)

_checkpoint_delta = multiplicity.checkpoint_delta

#: Deliberately broken copies of the δ the product spends at a checkpoint.
BROKEN: dict[str, Callable[..., float]] = {
    "certify at 2δ": lambda index, delta, rho=0.5: 2 * _checkpoint_delta(index, delta, rho),
    "no δ split (full δ at every checkpoint)": lambda index, delta, rho=0.5: delta,
}


#: Decides whether to attempt and on which grid: (recent, ledger scores, ledger correctness,
#: δ_a, rng) → the grid to test, or None for no attempt.
Gate = Callable[
    [np.ndarray, np.ndarray, np.ndarray, float, np.random.Generator], list[float] | None
]


def always(recent: np.ndarray, scores: np.ndarray, _c: object, delta_a: float, _r: object):
    return threshold_grid(recent, scores, alpha=ALPHA, delta=delta_a)


def product_readiness(
    recent: np.ndarray,
    scores: np.ndarray,
    _correct: np.ndarray,
    delta_a: float,
    rng: np.random.Generator,
) -> list[float] | None:
    """The product's check on an independent out-of-fold sample of the same model: every
    testable point, the start it picks, or no attempt."""
    grid = threshold_grid(recent, scores, alpha=ALPHA, delta=delta_a, start_share=0)
    oof_scores = rng.random(OOF)
    oof_correct = rng.random(OOF) >= TRUE_ERROR
    verdict = assess(oof_scores, oof_correct, scores, grid, recent, alpha=ALPHA, delta=delta_a)
    if not verdict.ready or verdict.start_threshold is None:
        return None
    return [t for t in grid if t <= verdict.start_threshold]


def peeking(
    recent: np.ndarray, scores: np.ndarray, correct: np.ndarray, delta_a: float, _r: object
) -> list[float] | None:
    """A broken check that reads the ledger's labels: attempt only when the test would pass."""
    grid = threshold_grid(recent, scores, alpha=ALPHA, delta=delta_a)
    return grid if certify(scores, correct, grid, alpha=ALPHA, delta=delta_a).certified else None


def breached_streams(
    streams: int = STREAMS,
    *,
    alpha: float = ALPHA,
    delta: float = DELTA,
    seed: int = SEED,
    gate: Gate = always,
) -> int:
    """Number of streams that ever deploy a version (with a flat error > α all are bad)."""
    rng = np.random.default_rng(seed)
    error = 1.005 * alpha
    sizes = [cp.ledger_size for cp in checkpoint_schedule(alpha, delta)[:CHECKPOINTS]]
    breached = 0
    for _ in range(streams):
        active = None
        last_index: int | None = None
        last_step: int | None = None
        for n in sizes:
            due = due_attempt(
                n, alpha=alpha, delta=delta, last_index=last_index, last_epoch_step=last_step
            )
            assert due is not None and due.ledger_size == n
            # A fresh model: new scores for traffic and ledger, new errors on the ledger.
            recent = rng.random(RECENT)
            scores = rng.random(n)
            correct = rng.random(n) >= error
            grid = gate(recent, scores, correct, due.delta, rng)
            if grid is None:
                continue  # not attempted: no δ spent, the index stays
            last_index, last_step = due.index, due.epoch_step
            cand = certify(
                scores, correct, grid, alpha=alpha, delta=due.delta, coverage_scores=recent
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
    assert stats.binom.sf(UPPER, STREAMS, 0.0853) < 1e-6
    assert stats.binom.cdf(LOWER - 1, STREAMS, 0.0853) < 1e-7
    assert stats.binom.cdf(UPPER, STREAMS, 0.1646) < 1e-5
    assert stats.binom.cdf(UPPER, STREAMS, 0.2747) < 1e-44


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
    due = due_attempt(600, alpha=ALPHA, delta=DELTA, last_index=1, last_epoch_step=1)
    assert due is not None and due.delta != _checkpoint_delta(2, DELTA)  # the patch is in force
    k = breached_streams()
    print(f"\n{name}: {k}/{STREAMS} streams breached ({k / STREAMS:.1%}); upper edge {UPPER}")
    assert k > UPPER, (name, k, UPPER)


def test_readiness_check_keeps_the_promise() -> None:
    """The product's gate, which picks when to attempt and where the walk starts from an
    independent out-of-fold sample, stays within the promise (500 streams: it rarely
    attempts here, so it is cheap and the edge is the 99.9% quantile of Binomial(500, δ))."""
    streams = 500
    edge = int(stats.binom.ppf(0.999, streams, DELTA))
    k = breached_streams(streams, gate=product_readiness)
    print(f"\nproduct readiness: {k}/{streams} streams breached ({k / streams:.1%})")
    assert k <= edge, (k, edge)


def test_a_readiness_check_that_reads_ledger_labels_fails_the_band() -> None:
    """Mutation check: deciding when to attempt from the evidence breaks the promise."""
    k = breached_streams(gate=peeking)
    print(f"\npeeking gate: {k}/{STREAMS} streams breached ({k / STREAMS:.1%}); edge {UPPER}")
    assert k > UPPER, (k, UPPER)
