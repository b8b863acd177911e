"""Policy parameters and the audit ledger."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from service.policy import (
    Policy,
    audit_draw,
    effective_audit_rate,
    is_audited,
    label_is_automatable,
)


def test_policy_defaults_match_spec() -> None:
    p = Policy()
    assert (p.target_error, p.confidence, p.audit_rate) == (0.02, 0.95, 0.05)
    assert (p.min_labels, p.max_coverage_step, p.retrain_every) == (200, 0.10, 100)
    assert p.cold_start_audit_rate == 0.3
    assert p.delta == pytest.approx(0.05)
    assert p.never_automate == () and p.label_targets == {}


def test_from_dict_tolerates_missing_and_unknown_keys() -> None:
    p = Policy.from_dict({"target_error": 0.05, "never_automate": ["deny"], "colour": "red"})
    assert p.target_error == 0.05 and p.never_automate == ("deny",)
    assert p.confidence == 0.95
    assert Policy.from_dict(None) == Policy() == Policy.from_dict({})
    assert Policy.from_dict(p.to_dict()) == p
    assert not label_is_automatable(p, "deny") and label_is_automatable(p, "approve")


def test_label_targets_only_tighten() -> None:
    p = Policy(label_targets={"approve": 0.01, "other": 0.5})
    assert p.label_alpha("approve") == 0.01
    assert p.label_alpha("other") == 0.02
    assert p.label_alpha("unlisted") == 0.02


@pytest.mark.parametrize(
    "bad",
    [
        {"target_error": 0},
        {"confidence": 1.0},
        {"audit_rate": 0},
        {"min_labels": -1},
        {"label_targets": {"a": 2.0}},
        {"certification_margin": 0.02},
    ],
)
def test_policy_validation(bad: dict) -> None:
    with pytest.raises(ValueError):
        Policy.from_dict(bad)


@given(st.text(max_size=40))
def test_audit_draw_is_deterministic_and_in_unit_interval(case_id: str) -> None:
    u = audit_draw(case_id)
    assert 0.0 <= u < 1.0
    assert audit_draw(case_id) == u


def test_audit_draw_is_uniform() -> None:
    draws = np.array([audit_draw(f"case-{i}") for i in range(20000)])
    assert stats.kstest(draws, "uniform").pvalue > 1e-3
    share = np.mean([is_audited(f"c{i}", 0.05) for i in range(20000)])
    assert abs(share - 0.05) < 0.006


def test_effective_audit_rate_rule() -> None:
    p = Policy()
    assert effective_audit_rate(p, automating=False, coverage=0.0) == 0.3
    # partial automation keeps the rate up; extra labels cost audit_rate / c of traffic
    assert effective_audit_rate(p, automating=True, coverage=0.1) == pytest.approx(0.3)
    assert effective_audit_rate(p, automating=True, coverage=0.5) == pytest.approx(0.2)
    assert effective_audit_rate(p, automating=True, coverage=0.8) == pytest.approx(0.078125)
    assert effective_audit_rate(p, automating=True, coverage=1.0) == pytest.approx(0.05)
    assert effective_audit_rate(p, automating=True, coverage=1.0, drift_warning=True) == 0.1
    assert effective_audit_rate(p, automating=True, coverage=1.0, fallback=True) == 0.2
    # fallback leaves half of the new labels to train the model that has to recover
    assert effective_audit_rate(p, automating=False, coverage=0, fallback=True) == 0.5
    drifting = effective_audit_rate(
        p, automating=False, coverage=0, fallback=True, drift_warning=True
    )
    assert drifting == 0.5
    # A drift warning in cold start doubles the rate only up to the cap: at 0.5 or more,
    # doubling would flag every case and leave nothing to train on.
    assert effective_audit_rate(p, automating=False, coverage=0, drift_warning=True) == 0.5
    half = Policy(cold_start_audit_rate=0.6)
    assert effective_audit_rate(half, automating=False, coverage=0, drift_warning=True) == 0.6
    high = Policy(cold_start_audit_rate=0.8)
    assert effective_audit_rate(high, automating=False, coverage=0, fallback=True) == 0.8


@given(cov=st.floats(0.0, 1.0), fb=st.booleans(), dw=st.booleans(), auto=st.booleans())
def test_effective_audit_rate_bounds(cov: float, fb: bool, dw: bool, auto: bool) -> None:
    p = Policy()
    r = effective_audit_rate(p, automating=auto, coverage=cov, fallback=fb, drift_warning=dw)
    assert p.audit_rate <= r <= 1.0
    if auto and cov > 0:
        # the automatic share costs at most min(audit_rate / c, c·cold_start) of traffic
        base = effective_audit_rate(p, automating=auto, coverage=cov)
        assert cov * base <= min(p.audit_rate / cov, cov * p.cold_start_audit_rate) + 1e-12
