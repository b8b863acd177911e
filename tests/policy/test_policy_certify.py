"""Grid, certification, widening cap, checkpoints: property tests."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.policy import (
    REST,
    CertStep,
    Policy,
    allowed_coverage,
    binom_p_value,
    cap_threshold,
    capped_threshold,
    certify,
    certify_by_label,
    checkpoint_schedule,
    decide_promotion,
    due_attempt,
    min_cases_to_pass,
    split_delta,
    threshold_grid,
)

ALPHAS = st.sampled_from([0.01, 0.02, 0.05, 0.1])
DELTAS = st.sampled_from([0.01, 0.05, 0.1])


def ledger(seed: int, n: int, err_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores in [0.5, 1]; error probability err_scale·(1 − s)·2, decreasing in s."""
    rng = np.random.default_rng(seed)
    s = 0.5 + 0.5 * rng.beta(4, 1, n)
    correct = rng.random(n) >= err_scale * 2 * (1 - s)
    return s, correct


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(0, 1500),
    e=st.floats(0, 0.3),
    alpha=ALPHAS,
    delta=DELTAS,
    use_grid=st.booleans(),
)
def test_never_accepted_on_too_few_cases_and_fixed_sequence(
    seed: int, n: int, e: float, alpha: float, delta: float, use_grid: bool
) -> None:
    s, c = ledger(seed, n, e)
    if use_grid:
        grid = threshold_grid(s[: n // 2], s, alpha=alpha, delta=delta)
    else:  # an arbitrary grid, including points with too few cases
        grid = sorted(set(np.round(np.linspace(0.5, 1.0, 40), 4).tolist()), reverse=True)
    cert = certify(s, c, grid, alpha=alpha, delta=delta)
    n_min = min_cases_to_pass(alpha, delta)
    accepted = [st_.accepted for st_ in cert.steps]
    n_acc = sum(accepted)
    assert accepted == [True] * n_acc + [False] * (len(accepted) - n_acc)  # a prefix
    for step in cert.steps[:n_acc]:
        assert step.n >= n_min
        assert step.p_value <= delta
        assert step.p_value == pytest.approx(binom_p_value(step.k, step.n, alpha))
        assert step.upper_bound <= alpha + 1e-9
    if n_acc < len(cert.steps):  # stopped at the first failure; later points untested
        assert cert.steps[n_acc].p_value > delta and cert.steps[n_acc].tested
        assert not any(st_.tested for st_ in cert.steps[n_acc + 1 :])
    if n_acc:
        assert cert.threshold == cert.steps[n_acc - 1].threshold
        assert cert.coverage == pytest.approx(np.mean(s >= cert.threshold))
    else:
        assert cert.threshold is None and cert.coverage == 0.0


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(150, 1500),
    e=st.floats(0, 0.2),
    flips=st.integers(1, 20),
    alpha=ALPHAS,
    delta=DELTAS,
)
def test_adding_errors_never_widens(
    seed: int, n: int, e: float, flips: int, alpha: float, delta: float
) -> None:
    s, c = ledger(seed, n, e)
    grid = threshold_grid(s, s, alpha=alpha, delta=delta)  # grid depends on scores only
    before = certify(s, c, grid, alpha=alpha, delta=delta)
    rng = np.random.default_rng(seed + 1)
    c2 = c.copy()
    c2[rng.choice(n, size=min(flips, n), replace=False)] = False
    after = certify(s, c2, grid, alpha=alpha, delta=delta)
    assert after.coverage <= before.coverage
    if after.threshold is not None:
        assert before.threshold is not None and after.threshold >= before.threshold


@settings(max_examples=80, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(0, 3000),
    alpha=ALPHAS,
    delta=DELTAS,
    n_points=st.integers(1, 200),
)
def test_grid_comes_from_traffic_and_starts_where_a_pass_is_possible(
    seed: int, n: int, alpha: float, delta: float, n_points: int
) -> None:
    rng = np.random.default_rng(seed)
    recent = rng.random(1000)
    led = rng.random(n)
    grid = threshold_grid(recent, led, alpha=alpha, delta=delta, n_points=n_points)
    assert grid == sorted(set(grid), reverse=True)
    assert set(grid) <= set(recent.tolist())
    start = max(min_cases_to_pass(alpha, delta), math.ceil(0.25 * n))
    for t in grid:
        assert np.sum(led >= t) >= start


def test_capped_threshold_is_tested_first_when_stricter() -> None:
    rng = np.random.default_rng(3)
    recent, led = rng.random(5000), rng.random(2000)
    plain = threshold_grid(recent, led, alpha=0.02, delta=0.05)
    capped = threshold_grid(recent, led, alpha=0.02, delta=0.05, max_coverage=0.1)
    tau = capped_threshold(recent, 0.1)
    assert tau is not None and np.mean(recent >= tau) <= 0.1
    assert plain[0] < tau and capped == [tau, *plain]
    assert capped_threshold(recent, 0.0) is None
    # with ties the capped threshold steps up rather than exceeding the cap
    tied = np.array([0.9] * 50 + [0.5] * 50)
    assert capped_threshold(tied, 0.3) is None
    assert capped_threshold(tied, 0.6) == 0.9


steps_strategy = st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=0, max_size=30)


@settings(max_examples=200, deadline=None)
@given(raw=steps_strategy, current=st.floats(0, 1), allowed=st.floats(0, 1))
def test_widening_cap_holds_and_picks_accepted_only(
    raw: list[tuple[float, bool]], current: float, allowed: float
) -> None:
    # Build a walk: coverage increases as τ decreases; accepted steps form a prefix.
    covs = sorted(c for c, _ in raw)
    n_acc = sum(a for _, a in raw)
    steps = [CertStep(1 - cv, 100, 0, 0.0, 0.0, cv, True, i < n_acc) for i, cv in enumerate(covs)]
    chosen = cap_threshold(steps, current_coverage=current, allowed_coverage=allowed)
    if chosen is None:
        return
    assert chosen.accepted and chosen in steps
    assert chosen.coverage <= max(allowed, current) + 1e-9


def test_allowed_coverage_grows_with_traffic() -> None:
    p = Policy()
    assert allowed_coverage(0.0, 10_000, p, human_labels=199) == 0.0
    assert allowed_coverage(0.2, 0, p, human_labels=500) == pytest.approx(0.3)
    assert allowed_coverage(0.2, 250, p, human_labels=500) == pytest.approx(0.3)
    assert allowed_coverage(0.2, 750, p, human_labels=500) == pytest.approx(0.5)
    assert allowed_coverage(0.9, 10_000, p, human_labels=500) == 1.0
    assert allowed_coverage(0.2, 5000, p, human_labels=500, frozen=True) == 0.2


@given(alpha=ALPHAS, delta=DELTAS)
def test_delta_schedule_sums_to_at_most_delta(alpha: float, delta: float) -> None:
    sched = checkpoint_schedule(alpha, delta)
    assert sum(cp.delta for cp in sched) <= delta
    sizes = [cp.ledger_size for cp in sched]
    assert sizes == sorted(set(sizes))
    # the first step is where a region holding half the ledger can pass at δ₁ (≥ 100)
    assert sizes[0] == max(100, 2 * min_cases_to_pass(alpha, sched[0].delta))
    assert sched[0].delta == pytest.approx(delta / 2)
    assert all(
        b.ledger_size == max(math.ceil(sizes[0] * 1.5 ** (b.index - 1) - 1e-9), a.ledger_size + 1)
        for a, b in itertools.pairwise(sched)
    )


def test_checkpoint_schedule_values_and_due_logic() -> None:
    sched = checkpoint_schedule(0.02, 0.05)
    assert [cp.ledger_size for cp in sched[:4]] == [366, 549, 824, 1236]
    assert [cp.delta for cp in sched[:3]] == pytest.approx([0.025, 0.0125, 0.00625])
    assert [cp.ledger_size for cp in checkpoint_schedule(0.05, 0.05)[:3]] == [144, 216, 324]
    assert [cp.ledger_size for cp in checkpoint_schedule(0.10, 0.05)[:3]] == [100, 150, 225]
    assert due_attempt(365, alpha=0.02, delta=0.05, last_index=None, last_epoch_step=None) is None
    first = due_attempt(366, alpha=0.02, delta=0.05, last_index=None, last_epoch_step=None)
    assert first is not None and (first.index, first.epoch_step) == (1, 1)
    assert first.delta == pytest.approx(0.025)
    assert due_attempt(500, alpha=0.02, delta=0.05, last_index=1, last_epoch_step=1) is None
    # a step passed over (ledger jumped, or nobody attempted it) costs no δ: the next
    # attempt takes the next index whichever step it is at
    due = due_attempt(900, alpha=0.02, delta=0.05, last_index=1, last_epoch_step=1)
    assert due is not None and (due.index, due.epoch_step, due.ledger_size) == (2, 3, 824)
    assert due.delta == pytest.approx(0.0125)
    never = due_attempt(900, alpha=0.02, delta=0.05, last_index=None, last_epoch_step=None)
    assert never is not None and (never.index, never.epoch_step) == (1, 3)


def test_champion_challenger() -> None:
    s, c = ledger(0, 3000, 0.02)
    grid = threshold_grid(s, s, alpha=0.02, delta=0.05)
    good = certify(s, c, grid, alpha=0.02, delta=0.05)
    assert good.certified
    failing = certify(s, np.zeros_like(c), grid, alpha=0.02, delta=0.05)
    assert not failing.certified
    assert not decide_promotion(good, failing).promote  # never switches automation off
    assert decide_promotion(None, good).promote
    assert decide_promotion(failing, good).promote
    assert decide_promotion(good, good).promote
    assert not decide_promotion(good, good, active_coverage=0.9, candidate_coverage=0.5).promote


def test_per_label_targets_and_never_automate() -> None:
    rng = np.random.default_rng(7)
    n = 6000
    s = 0.5 + 0.5 * rng.beta(6, 1, n)
    labels = rng.choice(["approve", "deny", "refer"], size=n, p=[0.6, 0.2, 0.2])
    correct = rng.random(n) >= 0.5 * (1 - s)
    policy = Policy(never_automate=("deny",), label_targets={"approve": 0.01})
    assert split_delta(policy, ["approve", "deny", "refer"], 0.05) == {
        "approve": 0.025,
        REST: 0.025,
    }
    res = certify_by_label(
        s[:3000],
        correct[:3000],
        labels[:3000],
        s[3000:],
        labels[3000:],
        policy=policy,
        labels=["approve", "deny", "refer"],
        delta=0.05,
    )
    assert set(res.groups) == {"approve", REST}
    assert res.threshold_for("deny") is None
    assert res.groups[REST].certified
    assert res.groups["approve"].alpha == 0.01 and res.groups[REST].alpha == 0.02
    assert res.groups["approve"].delta == 0.025
    for g, cert in res.groups.items():
        for step in cert.accepted_steps:  # certified sets contain only the group's cases
            members = (labels[:3000] == g) if g != REST else (labels[:3000] == "refer")
            assert step.n == int(np.sum(members & (s[:3000] >= step.threshold)))
    assert res.threshold_for("refer") == res.groups[REST].threshold
    assert 0.0 <= res.coverage <= 0.8 + 1e-9  # deny (20%) is never automated
