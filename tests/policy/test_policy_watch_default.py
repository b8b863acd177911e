"""The live watch at the confidence new tasks get (``watch_confidence`` 0.99, docs/policy.md,
"The watch's own confidence"): it still reacts to 1.5α, and it cries wolf far less often
than the same watch at the certification's own 95%.

Setting: α = 2%, window 300, checked after every audited automatic answer, the watch starting
empty (a newly deployed version); 2,000 simulated streams per check, fixed seeds. Measured
with 4,000 streams:

* true error 1.5α: alarm within 3,000 audited answers in 96.3% of streams (δ/2: 88.0%);
* true error 0.75α: a false alarm within 2,000 audited answers in 3.5% (2δ: 8.2%).

Bands: power ≥ 93% (1,860 of 2,000), false alarms ≤ 5.5% (110 of 2,000). The correct watch
fails them with probability below 1e-6 (binomial tails, z ≈ 7.9 and 4.9); the watch at 2δ
passes the false-alarm band, and at δ/2 the power band, with probability below 1e-5 — so a
default that silently fell back to the task's 95%, or doubled δ anywhere, fails here.
"""

from __future__ import annotations

import numpy as np
import pytest

from service.policy import first_alarm
from service.schemas.tasks import PolicySchema

ALPHA, STREAMS = 0.02, 2000
POWER_WITHIN, POWER_SHARE = 3000, 0.93
FALSE_WITHIN, FALSE_SHARE = 2000, 0.055


def default_delta() -> float:
    return 1.0 - PolicySchema().load({})["watch_confidence"]


def share_alarmed(error: float, within: int, delta: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    errors = rng.random((STREAMS, within)) < error
    return float(np.mean(first_alarm(errors, alpha=ALPHA, delta=delta) > 0))


def power(delta: float) -> float:
    return share_alarmed(1.5 * ALPHA, POWER_WITHIN, delta, seed=11)


def false_alarms(delta: float) -> float:
    return share_alarmed(0.75 * ALPHA, FALSE_WITHIN, delta, seed=12)


def test_new_tasks_watch_at_99_percent() -> None:
    assert default_delta() == pytest.approx(0.01)


def test_the_default_watch_detects_one_and_a_half_alpha() -> None:
    share = power(default_delta())
    print(f"\nalarm within {POWER_WITHIN} audited answers at 1.5α: {share:.1%}")
    assert share >= POWER_SHARE


def test_the_default_watch_rarely_cries_wolf() -> None:
    share = false_alarms(default_delta())
    print(f"\nfalse alarm within {FALSE_WITHIN} audited answers at 0.75α: {share:.1%}")
    assert share <= FALSE_SHARE


def test_a_watch_at_half_the_level_fails_the_power_band() -> None:
    assert power(default_delta() / 2) < POWER_SHARE


def test_a_watch_at_twice_the_level_fails_the_false_alarm_band() -> None:
    assert false_alarms(2 * default_delta()) > FALSE_SHARE
    # the certification's own 95% (what a task without the setting gets) fails it by far
    assert false_alarms(0.05) > 2 * FALSE_SHARE
