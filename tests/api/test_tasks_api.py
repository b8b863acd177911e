"""Task definition over the API: create, read, change, and what may not change."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from service.models import AuditEvent, Task
from tests.helpers import SIMPLE_TASK, auth


def test_create_task_returns_definition_with_defaults_and_live_status(client, tokens):
    resp = client.post("/api/v1/tasks", json=SIMPLE_TASK, headers=auth(tokens["admin"]))
    assert resp.status_code == 201
    body = resp.json
    assert body["name"] == "loan-review"
    assert body["policy"]["target_error"] == 0.02
    assert body["policy"]["min_labels"] == 200
    assert body["review"]["lease_seconds"] == 300
    assert body["automation"]["state"] == "manual"
    assert body["automation"]["threshold"] is None
    assert body["training"] == {"state": "idle", "job_id": None}
    assert body["counts"] == {"cases": 0, "pending": 0, "labelled": 0, "auto": 0}


def test_create_task_writes_audit_event(client, tokens, db):
    client.post("/api/v1/tasks", json=SIMPLE_TASK, headers=auth(tokens["admin"]))
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "task.created")).all()
    assert len(events) == 1
    assert events[0].actor_type == "token"


def test_duplicate_task_name_is_conflict(client, tokens, task):
    resp = client.post("/api/v1/tasks", json=SIMPLE_TASK, headers=auth(tokens["admin"]))
    assert resp.status_code == 409
    assert resp.json["error"]["code"] == "conflict"


def test_get_and_list_tasks(client, tokens, task):
    resp = client.get("/api/v1/tasks/loan-review", headers=auth(tokens["reviewer"]))
    assert resp.status_code == 200
    assert resp.json["labels"] == ["good", "bad"]
    listing = client.get("/api/v1/tasks", headers=auth(tokens["app"]))
    assert [t["name"] for t in listing.json["tasks"]] == ["loan-review"]


def test_unknown_task_is_404(client, tokens):
    resp = client.get("/api/v1/tasks/nope", headers=auth(tokens["admin"]))
    assert resp.status_code == 404
    assert resp.json["error"]["code"] == "not_found"


def test_patch_policy_review_webhook_labels_fields(client, tokens, task, db):
    resp = client.patch(
        "/api/v1/tasks/loan-review",
        json={
            "policy": {"target_error": 0.05, "never_automate": ["bad"]},
            "review": {"instructions": "# Be careful"},
            "webhook": {"url": "http://127.0.0.1:9/hook", "secret": "s3cret-value"},
            "add_labels": ["unsure"],
            "add_fields": [{"name": "note", "type": "text"}],
        },
        headers=auth(tokens["admin"]),
    )
    assert resp.status_code == 200, resp.json
    body = resp.json
    assert body["policy"]["target_error"] == 0.05
    assert body["policy"]["min_labels"] == 200  # untouched keys kept
    assert body["policy"]["never_automate"] == ["bad"]
    assert body["labels"] == ["good", "bad", "unsure"]
    assert body["fields"][-1] == {"name": "note", "type": "text", "required": False}
    assert body["webhook"] == {"url": "http://127.0.0.1:9/hook"}  # secret never shown
    assert "s3cret" not in resp.get_data(as_text=True)
    row = db.scalar(select(Task).where(Task.name == "loan-review"))
    assert row.revision == 2
    changed = db.scalars(select(AuditEvent).where(AuditEvent.action == "task.changed")).all()
    assert len(changed) == 1 and "before" in changed[0].details


def test_patch_cannot_add_required_field_or_unknown_policy_label(client, tokens, task):
    resp = client.patch(
        "/api/v1/tasks/loan-review",
        json={"add_fields": [{"name": "x", "type": "number", "required": True}]},
        headers=auth(tokens["admin"]),
    )
    assert resp.status_code == 422
    assert "add_fields" in resp.json["error"]["details"]
    resp = client.patch(
        "/api/v1/tasks/loan-review",
        json={"policy": {"never_automate": ["maybe"]}},
        headers=auth(tokens["admin"]),
    )
    assert resp.status_code == 422
    resp = client.patch(
        "/api/v1/tasks/loan-review", json={"rename": "x"}, headers=auth(tokens["admin"])
    )
    assert resp.status_code == 422
    assert "rename" in resp.json["error"]["details"]


BAD_DEFINITIONS: list[tuple[dict[str, Any], str]] = [
    ({"labels": ["a", "b"], "fields": [{"name": "x", "type": "text"}]}, "name"),
    ({"name": "t", "labels": ["a"], "fields": [{"name": "x", "type": "text"}]}, "labels"),
    ({"name": "t", "labels": ["a", "a"], "fields": [{"name": "x", "type": "text"}]}, "labels"),
    ({"name": "t", "labels": ["a", "b"], "fields": []}, "fields"),
    ({"name": "t", "labels": ["a", "b"], "fields": [{"name": "x", "type": "image"}]}, "fields"),
    ({"name": "Bad Name", "labels": ["a", "b"], "fields": [{"name": "x", "type": "text"}]}, "name"),
    (
        {
            "name": "t",
            "labels": ["a", "b"],
            "fields": [{"name": "x", "type": "text"}],
            "policy": {"target_error": 2},
        },
        "policy",
    ),
    *[
        (
            {
                "name": "t",
                "labels": ["a", "b"],
                "fields": [{"name": "x", "type": "text"}],
                "policy": {key: 0},
            },
            "policy",
        )
        for key in ("audit_rate", "cold_start_audit_rate")
    ],
    (
        {
            "name": "t",
            "labels": ["a", "b"],
            "fields": [{"name": "x", "type": "text"}],
            "surprise": 1,
        },
        "surprise",
    ),
]


def test_bad_task_definitions_are_422_naming_the_field_and_store_nothing(client, tokens, db):
    for definition, field in BAD_DEFINITIONS:
        resp = client.post("/api/v1/tasks", json=definition, headers=auth(tokens["admin"]))
        assert resp.status_code == 422, (definition, resp.json)
        assert field in resp.json["error"]["details"], (definition, resp.json)
    assert db.scalars(select(Task)).all() == []


def test_webhook_credentials_are_never_shown_and_only_admins_see_webhooks(
    client, tokens, db
) -> None:
    """Issue #16: a webhook URL with user:password was returned to app, reviewer and analyst
    tokens and stored in clear in the audit log."""
    from sqlalchemy import select

    from service.models import AuditEvent
    from tests.helpers import SIMPLE_TASK, auth

    secret_url = "http://hooks:s3cret-pw@127.0.0.1:9/in"
    body = dict(SIMPLE_TASK, webhook={"url": secret_url, "secret": "whsec_" + "a" * 32})
    created = client.post("/api/v1/tasks", json=body, headers=auth(tokens["admin"]))
    assert created.status_code == 201, created.json
    assert created.json["webhook"] == {"url": "http://hooks:***@127.0.0.1:9/in"}
    other = "http://ops:an0ther-pw@127.0.0.1:9/v2"
    patched = client.patch(
        "/api/v1/tasks/loan-review", json={"webhook": {"url": other}}, headers=auth(tokens["admin"])
    )
    assert patched.status_code == 200 and patched.json["webhook"]["url"].count("***") == 1
    for role in ("app", "reviewer", "analyst"):
        seen = client.get("/api/v1/tasks/loan-review", headers=auth(tokens[role]))
        assert seen.status_code == 200 and seen.json["webhook"] is None, role
        listed = client.get("/api/v1/tasks", headers=auth(tokens[role])).get_data(as_text=True)
        assert "127.0.0.1:9" not in listed, role
    admin_view = client.get("/api/v1/tasks/loan-review", headers=auth(tokens["admin"])).json
    assert admin_view["webhook"] == {"url": "http://ops:***@127.0.0.1:9/v2"}
    events = db.scalars(select(AuditEvent)).all()
    recorded = " ".join(str(e.details) for e in events)
    assert "s3cret-pw" not in recorded and "an0ther-pw" not in recorded
