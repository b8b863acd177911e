"""The live watch's two settings (docs/policy.md, "How fast the live watch reacts").

``watch_min_answers``: the live watch cannot fall back on a version's first few audited
automatic answers.

On a fresh watch at α = 10%, two wrong answers out of two already put the one-sided lower
bound above α, and every newly certified version starts a fresh watch: the replays lost
whole runs to such fallbacks on rules whose true error was 6.8% (docs/backtest.md, "Where
the share is lost"). The setting trades them for a slower reaction to a bad new version.

``watch_confidence``: the watch's test at its own confidence (unset: the task's). At α = 2%
and 95%, one wrong answer of one already falls back; at 99% it does not.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from service.db import utcnow
from service.models import Case, Task
from service.policy import Policy, first_alarm, live_error_alarm
from service.services import automation, labels
from tests.helpers import auth, good_input, install_model


def test_no_alarm_before_the_minimum_then_the_same_rule() -> None:
    two_wrong = live_error_alarm([1, 1], alpha=0.10, delta=0.05)
    assert two_wrong.alarm  # today's watch: 2 of 2 "shows" an error above 10%
    assert not live_error_alarm([1, 1], alpha=0.10, delta=0.05, min_answers=30).alarm
    bad = [1] * 8 + [0] * 22  # 8 of 30: shown above 10% at 95%
    assert live_error_alarm(bad, alpha=0.10, delta=0.05, min_answers=30).alarm
    assert not live_error_alarm(bad[:29], alpha=0.10, delta=0.05, min_answers=30).alarm
    # The vectorised simulation measures exactly the same rule.
    errors = [[1, 1] + [0] * 60, bad + [0] * 32]
    assert first_alarm(errors, alpha=0.10, delta=0.05, min_answers=30).tolist() == [0, 30]
    assert first_alarm(errors, alpha=0.10, delta=0.05).tolist() == [2, 2]


@pytest.mark.parametrize("value", [0, 301, 2.5])
def test_out_of_range_values_are_refused(client: Any, tokens: Any, task: Any, value: Any) -> None:
    resp = _patch_policy(client, tokens, task["name"], watch_min_answers=value)
    assert resp.status_code == 422, resp.json
    assert "watch_min_answers" in str(resp.json)
    with pytest.raises(ValueError, match="watch_min_answers"):
        Policy(watch_min_answers=0)


def _patch_policy(client: Any, tokens: Any, name: str, **values: Any) -> Any:
    """An admin's PATCH of the task's policy; the response, for the caller to check."""
    return client.patch(
        f"/api/v1/tasks/{name}", json={"policy": values}, headers=auth(tokens["admin"])
    )


def _audited_auto_cases(app: Any, db: Any, client: Any, tokens: Any, name: str) -> Task:
    install_model(db, name, threshold=0.5)
    resp = _patch_policy(client, tokens, name, audit_rate=0.3)
    assert resp.status_code == 200, resp.json
    for _ in range(160):
        client.post(
            f"/api/v1/tasks/{name}/predict",
            json={"input": good_input()},
            headers=auth(tokens["app"]),
        )
    return db.scalar(select(Task).where(Task.name == name))


def _label_wrong_until_fallback(db: Any, row: Task) -> int:
    """Label the audited automatic answers wrong, one by one; how many until the fallback
    (0: none)."""
    audited = list(
        db.scalars(
            select(Case)
            .where(Case.task_id == row.id, Case.audit.is_(True), Case.route == "auto")
            .order_by(Case.created_at, Case.id)
        )
    )
    assert len(audited) >= 32, "expected audited automatic answers at a 30% rate"
    for i, case in enumerate(audited[:32], start=1):
        case.human_label = "bad" if case.suggestion_label == "good" else "good"
        case.human_labelled_at = utcnow()
        labels.label_recorded(db, row, case)
        if row.automation_state == "fallback":
            return i
    return 0


def test_the_watch_waits_for_the_minimum(app: Any, db: Any, client: Any, tokens: Any, task: Any):
    resp = _patch_policy(client, tokens, task["name"], watch_min_answers=30)
    assert resp.status_code == 200, resp.json
    assert resp.json["policy"]["watch_min_answers"] == 30
    row = _audited_auto_cases(app, db, client, tokens, task["name"])
    assert automation.live_status(db, row).alarm is False
    assert _label_wrong_until_fallback(db, row) == 30  # every answer wrong: at the 30th
    assert row.automation_state == "fallback"


def test_a_new_task_watches_at_99_percent_from_the_first_answer(
    app: Any, db: Any, client: Any, tokens: Any, task: Any
):
    row = _audited_auto_cases(app, db, client, tokens, task["name"])
    policy = Policy.from_dict(row.policy)
    assert policy.watch_min_answers == 1 and row.policy["watch_confidence"] == 0.99
    assert _label_wrong_until_fallback(db, row) == _wrong_needed(policy.target_error, 0.01)


def test_a_task_stored_before_the_setting_keeps_its_confidence(
    app: Any, db: Any, client: Any, tokens: Any, task: Any
):
    """Nothing changes under a running task: a stored policy without the key is watched at
    the task's own confidence (95% here), as before the setting existed."""
    row = _audited_auto_cases(app, db, client, tokens, task["name"])
    row.policy = {k: v for k, v in row.policy.items() if k != "watch_confidence"}
    db.flush()
    target = Policy.from_dict(row.policy).target_error
    assert _wrong_needed(target, 0.05) < _wrong_needed(target, 0.01)  # tells them apart
    assert _label_wrong_until_fallback(db, row) == _wrong_needed(target, 0.05)


def test_the_watch_tests_at_its_own_confidence() -> None:
    assert live_error_alarm([1], alpha=0.02, delta=0.05).alarm
    assert not live_error_alarm([1], alpha=0.02, delta=0.01).alarm
    # 2 wrong of 2 at 99%: the exact bound is √0.01 = α itself, not above it (floating point
    # gives 0.10000000000000005; a replay fell back on that).
    two_of_two = live_error_alarm([1, 1], alpha=0.10, delta=0.01)
    assert two_of_two.lower == pytest.approx(0.10) and not two_of_two.alarm
    assert live_error_alarm([1, 1, 1], alpha=0.10, delta=0.01).alarm
    assert Policy(confidence=0.9).watch_delta == pytest.approx(0.1)  # unset: the task's δ
    assert Policy(confidence=0.9, watch_confidence=0.99).watch_delta == pytest.approx(0.01)


@pytest.mark.parametrize("value", [0.4, 1.0, "high"])
def test_out_of_range_confidences_are_refused(
    client: Any, db: Any, tokens: Any, task: Any, value: Any
) -> None:
    before = db.scalar(select(Task.policy).where(Task.name == task["name"]))
    resp = _patch_policy(client, tokens, task["name"], watch_confidence=value)
    assert resp.status_code == 422, resp.json
    assert "watch_confidence" in str(resp.json)
    db.expire_all()
    assert db.scalar(select(Task.policy).where(Task.name == task["name"])) == before
    with pytest.raises(ValueError, match="watch_confidence"):
        Policy(watch_confidence=1.0)


def _wrong_needed(alpha: float, delta: float) -> int:
    return next(
        n for n in range(1, 40) if live_error_alarm([1] * n, alpha=alpha, delta=delta).alarm
    )


def test_a_stricter_watch_needs_more_wrong_answers(
    app: Any, db: Any, client: Any, tokens: Any, task: Any
):
    resp = _patch_policy(client, tokens, task["name"], watch_confidence=0.999)
    assert resp.status_code == 200, resp.json
    assert resp.json["policy"]["watch_confidence"] == 0.999
    row = _audited_auto_cases(app, db, client, tokens, task["name"])
    target = Policy.from_dict(row.policy).target_error
    strict, default = _wrong_needed(target, 0.001), _wrong_needed(target, 0.05)
    assert strict > default  # the test below can tell the two watches apart
    assert _label_wrong_until_fallback(db, row) == strict


def test_unsetting_the_watch_confidence_follows_the_task_again(
    client: Any, db: Any, tokens: Any, task: Any
):
    for value, expected in ((0.99, 0.01), (None, 0.05)):
        resp = _patch_policy(client, tokens, task["name"], watch_confidence=value)
        assert resp.status_code == 200, resp.json
        db.expire_all()
        row = db.scalar(select(Task).where(Task.name == task["name"]))
        assert Policy.from_dict(row.policy).watch_delta == pytest.approx(expected)
