"""The report's opening says why nothing was automated: the newest word on it."""

from __future__ import annotations

from tandem.simulate.report import _why_not_automated


def test_the_newest_deferral_or_failed_attempt_is_the_reason() -> None:
    deferred = {"version": 11, "readiness": {"reason": "not attempted: the best region …"}}
    failed = {
        "version": 40,
        "certified": False,
        "checkpoint": {"ledger_size_due": 1140, "delta": 0.003125},
        "tested_steps": {"*": [{"coverage": 0.65, "errors": 91, "n": 660}]},
    }
    quiet = {"version": 41, "certified": False}  # trained, nothing due: says nothing
    assert _why_not_automated([deferred, failed, quiet]) == (
        ": v40 was tested on 1140 audited cases at δ 0.0031 and failed: the walk's first "
        "step (top 65% of traffic) held 91 errors in 660 cases"
    )
    assert _why_not_automated([failed, deferred]) == ": v11 was not attempted: the best region …"
    assert _why_not_automated([quiet]) == ""
