"""The report's opening says why nothing was automated: the newest word on it."""

from __future__ import annotations

from tandem.simulate.report import why_not_automated


def test_the_newest_deferral_or_failed_attempt_is_the_reason() -> None:
    deferred = {"version": 11, "readiness": {"reason": "not attempted: the best region …"}}
    failed = {
        "version": 40,
        "certified": False,
        "checkpoint": {"ledger_size_due": 1140, "delta": 0.003125},
        "tested_steps": {"*": [{"coverage": 0.65, "errors": 91, "n": 660}]},
    }
    quiet = {"version": 41, "certified": False}  # trained, nothing due: says nothing
    assert why_not_automated([deferred, failed, quiet]) == (
        ": v40 was tested on 1140 audited cases at δ 0.0031 and failed: the walk's first "
        "step (top 65% of traffic) held 91 errors in 660 cases"
    )
    assert why_not_automated([failed, deferred]) == ": v11 was not attempted: the best region …"
    assert why_not_automated([quiet]) == ""
    # Runs made since attempts record why in numbers: that sentence is the reason.
    said = "the most confident 27% of traffic had 2 wrong of 82 audited (2.4%), bound 7.1% …"
    assert why_not_automated([{**failed, "why_not": said}]) == (
        f": v40 was tested on 1140 audited cases at δ 0.0031 and failed: {said}"
    )


def test_the_versions_table_says_why_each_attempt_certified_nothing() -> None:
    from tandem.simulate.report import _not_certified_because

    assert _not_certified_because({"certified": False, "why_not": "2 wrong of 82"}) == (
        "2 wrong of 82"
    )
    deferred = {"certified": False, "readiness": {"reason": "not attempted: too few"}}
    assert _not_certified_because(deferred) == "not attempted: too few"
    assert _not_certified_because({"certified": True, "readiness": {"reason": "old"}}) == ""
    assert _not_certified_because({"certified": False}).startswith("no attempt was due")


def _run(alerts: list[dict], *, worst: float | None, order: str = "shuffle") -> dict:
    return {
        "alerts": alerts,
        "order": order,
        "target_error": 0.1,
        "policies": {"tandem": {"deployed_true_error_max": worst}},
    }


def test_the_report_lists_alarms_and_calls_false_ones_false() -> None:
    from tandem.simulate.report import alarms_html

    fallback = {
        "action": "automation.fallback",
        "details": {
            "reason": "live error shown to exceed the target",
            "evidence": {"n": 2, "errors": 2, "lower": 0.2236},
        },
    }
    warning = {"action": "drift.warning", "details": {"warnings": ["Expenses: PSI 0.377"]}}
    page = alarms_html(_run([fallback, warning], worst=0.068))
    assert "2 wrong of 2 audited automatic answers, lower bound 22.4%" in page
    assert "Expenses: PSI 0.377" in page
    assert "these were false alarms" in page
    # A deployed rule above target: the alarm may have been right; file order: the traffic
    # may have changed. Neither is called false.
    assert "false alarm" not in alarms_html(_run([fallback], worst=0.12))
    assert "false alarm" not in alarms_html(_run([fallback], worst=0.05, order="file"))
    assert "No fallback" in alarms_html(_run([], worst=0.05))
