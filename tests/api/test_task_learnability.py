"""A task definition under which the task could never train a model is refused (docs/tasks.md,
"Settings a task cannot learn with"): on create and on a policy change, nothing stored."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from service.models import AuditEvent, Task
from service.policy import Policy, learning_blockers
from tests.helpers import SIMPLE_TASK, auth


def _events(db: Any, action: str) -> int:
    return int(db.scalar(select(func.count()).where(AuditEvent.action == action)) or 0)


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"cold_start_audit_rate": 1.0}, "cold_start_audit_rate"),
        ({"audit_rate": 1.0}, "audit_rate"),
        ({"audit_rate": 1}, "audit_rate"),
    ],
)
def test_create_refuses_a_policy_that_can_never_train(client, tokens, db, policy, field):
    resp = client.post(
        "/api/v1/tasks", json={**SIMPLE_TASK, "policy": policy}, headers=auth(tokens["admin"])
    )
    assert resp.status_code == 422, resp.json
    error = resp.json["error"]
    assert error["code"] == "validation_error"
    why = error["details"]["policy"][field][0]
    assert "never" in why and "training data" in why and "below 1" in why
    assert f"{field} 1 is too high" in error["message"]
    assert db.scalar(select(Task)) is None
    assert _events(db, "task.created") == 0


def test_both_rates_at_one_name_both_fields(client, tokens):
    resp = client.post(
        "/api/v1/tasks",
        json={**SIMPLE_TASK, "policy": {"audit_rate": 1.0, "cold_start_audit_rate": 1.0}},
        headers=auth(tokens["admin"]),
    )
    assert resp.status_code == 422
    assert set(resp.json["error"]["details"]["policy"]) == {"audit_rate", "cold_start_audit_rate"}


def test_a_rate_just_below_one_is_accepted(client, tokens):
    resp = client.post(
        "/api/v1/tasks",
        json={**SIMPLE_TASK, "policy": {"cold_start_audit_rate": 0.9, "audit_rate": 0.9}},
        headers=auth(tokens["admin"]),
    )
    assert resp.status_code == 201, resp.json
    assert resp.json["policy"]["cold_start_audit_rate"] == 0.9
    assert resp.json["policy"]["audit_rate"] == 0.9


@pytest.mark.parametrize("field", ["cold_start_audit_rate", "audit_rate"])
def test_patch_refuses_the_same_and_changes_nothing(client, tokens, task, db, field):
    before = db.scalar(select(Task).where(Task.name == "loan-review"))
    policy, revision = dict(before.policy), before.revision
    resp = client.patch(
        "/api/v1/tasks/loan-review",
        # Another valid change in the same body must not be applied either.
        json={"policy": {field: 1.0, "target_error": 0.05}, "add_labels": ["unsure"]},
        headers=auth(tokens["admin"]),
    )
    assert resp.status_code == 422, resp.json
    assert field in resp.json["error"]["details"]["policy"]
    db.expire_all()
    after = db.scalar(select(Task).where(Task.name == "loan-review"))
    assert after.policy == policy and after.revision == revision
    assert after.labels == ["good", "bad"]
    assert _events(db, "task.changed") == 0
    near = client.patch(
        "/api/v1/tasks/loan-review",
        json={"policy": {field: 0.9}},
        headers=auth(tokens["admin"]),
    )
    assert near.status_code == 200, near.json
    assert near.json["policy"][field] == 0.9


def test_learning_blockers_is_the_rule_the_service_applies():
    assert learning_blockers(Policy()) == {}
    assert learning_blockers(Policy(cold_start_audit_rate=0.9999, audit_rate=0.9999)) == {}
    assert set(learning_blockers(Policy(cold_start_audit_rate=1.0))) == {"cold_start_audit_rate"}
    # Stored policies from before the rule still load: the rule is not in Policy's checks.
    assert Policy.from_dict({"audit_rate": 1.0}).audit_rate == 1.0


def test_the_rates_the_policy_page_keeps_below_one_are_the_ones_refused_at_one():
    from service.policy import Policy
    from service.policy.params import RATES_BELOW_ONE, learning_blockers

    for name in RATES_BELOW_ONE:
        assert name in learning_blockers(Policy(**{name: 1.0}))
    assert set(learning_blockers(Policy(audit_rate=1.0, cold_start_audit_rate=1.0))) == set(
        RATES_BELOW_ONE
    )
