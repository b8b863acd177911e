"""The readiness check: attempt only when a pass is likely, judged without ledger labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from service.policy import certify, threshold_grid
from service.policy.readiness import (
    MIN_PASS_PROBABILITY,
    assess,
    max_errors_to_pass,
    pass_probability,
)

ALPHA, DELTA = 0.05, 0.025


def stream(n: int, rng: np.random.Generator, *, top_error: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores uniform on [0, 1]; error top_error above 0.5, 30% below."""
    s = rng.random(n)
    p = np.where(s >= 0.5, top_error, 0.3)
    return s, rng.random(n) >= p


def test_max_errors_to_pass_is_the_binomial_boundary() -> None:
    for n in (30, 72, 150, 400, 1000):
        k = max_errors_to_pass(n, ALPHA, DELTA)
        if k >= 0:
            assert stats.binom.cdf(k, n, ALPHA) <= DELTA
        assert stats.binom.cdf(k + 1, n, ALPHA) > DELTA
    assert max_errors_to_pass(50, ALPHA, DELTA) == -1  # 0.95^50 = 0.077 > δ: nothing passes


def test_pass_probability_predicts_the_exact_test() -> None:
    """Beta-binomial prediction from m similar cases vs the frequency of passing on fresh
    ones, for a region of true error 2% at α = 5%."""
    rng = np.random.default_rng(1)
    n, m, true = 300, 1000, 0.02
    k_star = max_errors_to_pass(n, ALPHA, DELTA)
    predicted, passed = [], []
    for _ in range(400):
        e = int(rng.binomial(m, true))
        predicted.append(pass_probability(n, e, m, alpha=ALPHA, delta=DELTA))
        passed.append(rng.binomial(n, true) <= k_star)
    assert np.mean(predicted) == pytest.approx(np.mean(passed), abs=0.06)


def test_a_clean_region_is_ready_and_a_region_at_the_target_is_not() -> None:
    rng = np.random.default_rng(2)
    recent = rng.random(2000)
    ledger, _ = stream(400, rng, top_error=0.0)
    grid = threshold_grid(recent, ledger, alpha=ALPHA, delta=DELTA)
    oof_s, oof_ok = stream(800, rng, top_error=0.005)
    good = assess(oof_s, oof_ok, ledger, grid, recent, alpha=ALPHA, delta=DELTA)
    assert good.ready and good.pass_probability >= MIN_PASS_PROBABILITY
    assert 0.3 <= good.coverage <= 0.55
    oof_s, oof_ok = stream(800, rng, top_error=ALPHA)
    bad = assess(oof_s, oof_ok, ledger, grid, recent, alpha=ALPHA, delta=DELTA)
    assert not bad.ready
    assert "would pass" in bad.reason and "target of 5.0%" in bad.reason
    assert bad.estimated_error is not None and bad.estimated_error > 0.03
    assert bad.ledger_needed is None or bad.ledger_needed > 400


def test_the_cases_needed_are_enough_in_a_simulation() -> None:
    """The ledger size readiness names makes its region pass about half the time or more
    (the walk started at that region, as an attempt would start it)."""
    rng = np.random.default_rng(3)
    recent = rng.random(2000)
    ledger, _ = stream(300, rng, top_error=0.02)
    grid = threshold_grid(recent, ledger, alpha=ALPHA, delta=DELTA, start_share=0)
    oof_s, oof_ok = stream(2000, rng, top_error=0.02)
    verdict = assess(oof_s, oof_ok, ledger, grid, recent, alpha=ALPHA, delta=DELTA)
    assert not verdict.ready and verdict.ledger_needed is not None
    size = verdict.ledger_needed
    wins = 0
    for _ in range(200):
        s, ok = stream(size, rng, top_error=0.02)
        g = threshold_grid(recent, s, alpha=ALPHA, delta=DELTA, start_share=0)
        g = [t for t in g if t <= verdict.threshold]
        wins += certify(s, ok, g, alpha=ALPHA, delta=DELTA).certified
    assert wins >= 0.35 * 200


def test_no_step_wider_than_what_runs_means_not_ready() -> None:
    rng = np.random.default_rng(4)
    recent = rng.random(2000)
    ledger, _ = stream(400, rng, top_error=0.0)
    grid = threshold_grid(recent, ledger, alpha=ALPHA, delta=DELTA)
    oof_s, oof_ok = stream(800, rng, top_error=0.005)
    verdict = assess(
        oof_s, oof_ok, ledger, grid, recent, alpha=ALPHA, delta=DELTA, current_coverage=0.4
    )
    assert verdict.ready and verdict.coverage > 0.4
    capped = assess(
        oof_s,
        oof_ok,
        ledger,
        grid,
        recent,
        alpha=ALPHA,
        delta=DELTA,
        current_coverage=0.4,
        max_coverage=0.4,
    )
    assert not capped.ready
    assert "may not widen beyond the running 40% yet (the widening cap)" in capped.reason


def test_too_few_out_of_fold_cases_never_call_for_an_attempt() -> None:
    """No estimate is not a licence: a group with almost no out-of-fold cases (a rare label
    with its own target, or none at all) does not trigger an attempt."""
    rng = np.random.default_rng(5)
    recent = rng.random(2000)
    ledger, _ = stream(400, rng, top_error=0.0)
    grid = threshold_grid(recent, ledger, alpha=ALPHA, delta=DELTA)
    few = assess(rng.random(20), np.ones(20, bool), ledger, grid, recent, alpha=ALPHA, delta=DELTA)
    assert not few.ready and "no estimate" in few.reason and few.start_threshold is None
    none = assess(
        np.full(300, -np.inf), np.ones(300, bool), ledger, grid, recent, alpha=ALPHA, delta=DELTA
    )
    assert not none.ready and none.oof_cases == 0


def test_rank_matching_counts_only_the_groups_own_cases() -> None:
    """A group holding half the traffic: its top tenth is matched with the top tenth of ITS
    out-of-fold cases, not of all of them (−inf entries belong to other groups)."""
    rng = np.random.default_rng(6)
    recent = np.where(rng.random(2000) < 0.5, rng.random(2000), -np.inf)
    ledger = np.where(rng.random(600) < 0.5, rng.random(600), -np.inf)
    grid = threshold_grid(recent, ledger, alpha=ALPHA, delta=DELTA, start_share=0)
    oof = np.where(rng.random(1000) < 0.5, rng.random(1000), -np.inf)
    correct = np.ones(1000, bool)
    verdict = assess(oof, correct, ledger, grid, recent, alpha=ALPHA, delta=DELTA)
    share = verdict.ledger_cases / np.isfinite(ledger).sum()
    assert verdict.oof_cases == pytest.approx(share * np.isfinite(oof).sum(), abs=1)


def test_a_region_above_the_target_asks_for_a_better_model_not_more_audits() -> None:
    rng = np.random.default_rng(4)
    recent = rng.random(2000)
    ledger, _ = stream(400, rng, top_error=0.0)
    grid = threshold_grid(recent, ledger, alpha=ALPHA, delta=DELTA)
    oof_s, oof_ok = stream(800, rng, top_error=0.08)  # every region above α = 5%
    bad = assess(oof_s, oof_ok, ledger, grid, recent, alpha=ALPHA, delta=DELTA)
    assert not bad.ready and bad.ledger_needed is None
    assert (bad.estimated_error or 0) >= ALPHA
    assert "a better model is needed, not more audits" in bad.reason
    assert "would pass on a ledger of 400 audited cases" in bad.reason
