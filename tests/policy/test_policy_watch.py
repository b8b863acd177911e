"""The live watch, measured: it reacts to 1.5α fast enough and does not cry wolf too often.

Setting: α = 2%, δ = 5%, window 300, checked after every audited automatic answer, the watch
starting empty (a newly deployed version). 2,000 simulated streams per check, fixed seed.
Measured with 20,000 streams (scripts/watch_power.py gives the full table):

* true error 1.5α: the alarm fires within 1,500 audited answers in 97.5% of streams;
* true error 0.75α: a false alarm within the first 1,000 audited answers in 14.8%.

Bands: power ≥ 95% (1,900 of 2,000), false alarms ≤ 20% (400 of 2,000). For the correct watch
P(power band fails) = 4e-11 and P(false-alarm band fails) = 1.4e-10 (binomial tails).
Broken watches, each injected by patching the rule LiveWatch itself uses (``monitor._status``):
* alarm only when the lower bound exceeds 1.5α (α threshold off): detects 54% → fails power;
* two-sided interval (lower bound at 1 − δ/2): detects 91.8% → fails power (P(pass) 1e-8);
* δ doubled (lower bound at 1 − 2δ): false alarms 27.8% → fails (P(pass) 7e-16);
* alarm on the UPPER bound > α: alarms at the first answer → fails.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.policy import (
    LiveStatus,
    LiveWatch,
    alarm_table,
    first_alarm,
    live_error_alarm,
    monitor,
)

ALPHA, DELTA, WINDOW = 0.02, 0.05, 300
STREAMS = 2000
POWER_WITHIN, POWER_SHARE = 1500, 0.95
FALSE_WITHIN, FALSE_SHARE = 1000, 0.20

_status = monitor._status


def _with_alarm(rule: Callable[[LiveStatus, float], bool]) -> Callable[..., LiveStatus]:
    def status(n: int, k: int, alpha: float, delta: float, min_answers: int = 1) -> LiveStatus:
        s = _status(n, k, alpha, delta, min_answers)
        alarm = n >= max(min_answers, 1) and rule(s, alpha)
        return LiveStatus(s.n, s.errors, s.estimate, s.lower, s.upper, alarm)

    return status


BROKEN_LAX: dict[str, Callable[..., LiveStatus]] = {
    "lower bound > 1.5α": _with_alarm(lambda s, a: s.lower > 1.5 * a),
    "two-sided lower bound (δ/2)": lambda n, k, a, d, m=1: _status(n, k, a, d / 2, m),
}
BROKEN_JUMPY: dict[str, Callable[..., LiveStatus]] = {
    "δ doubled": lambda n, k, a, d, m=1: _status(n, k, a, 2 * d, m),
    "upper bound > α": _with_alarm(lambda s, a: s.upper > a),
}


def share_alarmed(error: float, within: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    errors = rng.random((STREAMS, within)) < error
    return float(np.mean(first_alarm(errors, alpha=ALPHA, delta=DELTA, window=WINDOW) > 0))


def power() -> float:
    return share_alarmed(1.5 * ALPHA, POWER_WITHIN, seed=11)


def false_alarms() -> float:
    return share_alarmed(0.75 * ALPHA, FALSE_WITHIN, seed=12)


@settings(max_examples=60, deadline=None)
@given(
    seq=st.lists(st.lists(st.integers(0, 1), min_size=1, max_size=250), min_size=1, max_size=4),
    window=st.integers(1, 60),
    alpha=st.sampled_from([0.02, 0.1, 0.3]),
    start=st.integers(0, 30),
)
def test_first_alarm_is_livewatch_checked_after_every_arrival(
    seq: list[list[int]], window: int, alpha: float, start: int
) -> None:
    width = max(len(row) for row in seq)
    rows = np.array([row + [0] * (width - len(row)) for row in seq])
    got = first_alarm(rows, alpha=alpha, delta=DELTA, window=window, start=start)
    for row, g in zip(rows, got, strict=True):
        watch, want = LiveWatch(alpha, DELTA, window), 0
        for t, e in enumerate(row, start=1):
            if watch.update([int(e)]).alarm and t > start:
                want = t
                break
        assert g == want


def test_alarm_table_is_the_watch_rule() -> None:
    table = alarm_table(ALPHA, DELTA, WINDOW)
    assert table[0] == 1 and table.size == WINDOW + 1
    for n in (1, 10, 50, 149, 300):
        k = int(table[n])
        assert not live_error_alarm(
            [1] * (k - 1) + [0] * (n - k + 1), alpha=ALPHA, delta=DELTA
        ).alarm
        if k <= n:
            assert live_error_alarm([1] * k + [0] * (n - k), alpha=ALPHA, delta=DELTA).alarm
    assert np.all(np.diff(table) >= 0)  # more answers never make the same count alarm sooner
    assert table[WINDOW] == 11  # 11 errors among 300: lower bound 2.1% > 2%


def test_watch_detects_one_and_a_half_alpha() -> None:
    share = power()
    print(f"\nalarm within {POWER_WITHIN} audited answers at 1.5α: {share:.1%}")
    assert share >= POWER_SHARE


def test_watch_false_alarms_at_three_quarters_alpha_are_bounded() -> None:
    share = false_alarms()
    print(f"\nfalse alarm within {FALSE_WITHIN} audited answers at 0.75α: {share:.1%}")
    assert share <= FALSE_SHARE


@pytest.mark.parametrize("name", list(BROKEN_LAX))
def test_a_lax_watch_fails_the_power_band(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(monitor, "_status", BROKEN_LAX[name])
    assert not live_error_alarm([1] * 11 + [0] * 289, alpha=ALPHA, delta=DELTA).alarm
    share = power()
    print(f"\n{name}: alarm within {POWER_WITHIN} at 1.5α: {share:.1%}")
    assert share < POWER_SHARE


@pytest.mark.parametrize("name", list(BROKEN_JUMPY))
def test_a_jumpy_watch_fails_the_false_alarm_band(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitor, "_status", BROKEN_JUMPY[name])
    assert live_error_alarm([1] * 10 + [0] * 290, alpha=ALPHA, delta=DELTA).alarm
    share = false_alarms()
    print(f"\n{name}: false alarm within {FALSE_WITHIN} at 0.75α: {share:.1%}")
    assert share > FALSE_SHARE
