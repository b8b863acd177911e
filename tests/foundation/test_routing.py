"""The router's decision table (pure)."""

from __future__ import annotations

import pytest

from service.routing import decide

BASE = dict(
    has_model=True,
    automation_state="automating",
    threshold=0.9,
    confidence=0.95,
    suggested_label="good",
    force_review=False,
    out_of_range=False,
)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, ("auto", "confident", "auto")),
        ({"confidence": 0.9}, ("auto", "confident", "auto")),  # at the threshold: automatic
        ({"confidence": 0.8999}, ("review", "low_confidence", "pending")),
        ({"force_review": True}, ("review", "forced", "pending")),
        ({"has_model": False, "confidence": None}, ("review", "cold_start", "pending")),
        ({"threshold": None}, ("review", "cold_start", "pending")),
        ({"automation_state": "manual"}, ("review", "cold_start", "pending")),
        ({"automation_state": "fallback"}, ("review", "fallback", "pending")),
        ({"out_of_range": True}, ("review", "invalid_input", "pending")),
        ({"never_automate": ("good",)}, ("review", "policy", "pending")),
        ({"audited": True}, ("auto", "confident", "auto")),
        ({"audited": True, "hold_audited": True}, ("review", "audit", "pending")),
        (
            {"audited": True, "hold_audited": True, "confidence": 0.5},
            ("review", "low_confidence", "pending"),
        ),
        # precedence: a human was asked for explicitly, whatever else holds
        (
            {"force_review": True, "out_of_range": True, "automation_state": "fallback"},
            ("review", "forced", "pending"),
        ),
        (
            {"out_of_range": True, "automation_state": "fallback"},
            ("review", "invalid_input", "pending"),
        ),
    ],
)
def test_decision_table(changes, expected):
    route = decide(**{**BASE, **changes})
    assert (route.route, route.reason, route.status) == expected
