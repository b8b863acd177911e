"""The review endpoints over HTTP: statuses, roles, scope, CSRF, exactly-once."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from service.db import utcnow
from service.models import Case, Review
from tests.helpers import auth


def test_claim_review_roundtrip(browser_user, queued, task, db):
    (case_id,) = queued(1)
    client, headers, _user = browser_user()
    resp = client.post(f"/api/v1/tasks/{task['name']}/queue/claim", headers=headers)
    assert resp.status_code == 200
    body = resp.json
    assert body["case_id"] == case_id and body["queue_state"] == "leased"
    assert body["lease_expires_at"].endswith("Z") and body["input"]["state"] == "CA"
    resp = client.post(
        f"/api/v1/cases/{case_id}/review", json={"label": "good", "comment": "ok"}, headers=headers
    )
    assert resp.status_code == 200
    assert resp.json["case_id"] == case_id and resp.json["label"] == "good"
    assert resp.json["review_id"] and resp.json["undo_until"] > resp.json["decided_at"]
    case = db.get(Case, case_id)
    assert case.status == "resolved" and case.label_source == "reviewer"
    again = client.post(f"/api/v1/cases/{case_id}/review", json={"label": "bad"}, headers=headers)
    assert again.status_code == 409
    assert again.json["error"]["details"]["reason"] == "already_resolved"
    empty = client.post(f"/api/v1/tasks/{task['name']}/queue/claim", headers=headers)
    assert empty.status_code == 204 and empty.data == b""
    assert db.scalar(select(Case.final_label).where(Case.id == case_id)) == "good"


def test_second_reviewer_late_submit_gets_409(browser_user, queued, task, db):
    (case_id,) = queued(1)
    a_client, a_headers, _ = browser_user()
    b_client, b_headers, _ = browser_user()
    a_client.post(f"/api/v1/tasks/{task['name']}/queue/claim", headers=a_headers)
    db.execute(
        update(Case).where(Case.id == case_id).values(lease_expires_at=utcnow() - timedelta(1))
    )
    db.commit()
    claimed = b_client.post(f"/api/v1/tasks/{task['name']}/queue/claim", headers=b_headers)
    assert claimed.json["case_id"] == case_id
    late = a_client.post(
        f"/api/v1/cases/{case_id}/review", json={"label": "bad"}, headers=a_headers
    )
    assert late.status_code == 409
    assert late.json["error"]["details"]["reason"] == "lease_lost"
    ok = b_client.post(f"/api/v1/cases/{case_id}/review", json={"label": "good"}, headers=b_headers)
    assert ok.status_code == 200
    labels = db.scalars(select(Review.label).where(Review.case_id == case_id)).all()
    assert labels == ["good"]


def test_release_and_undo_over_http(browser_user, queued, task):
    ids = queued(2)
    client, headers, _ = browser_user()
    first = client.post(f"/api/v1/tasks/{task['name']}/queue/claim", headers=headers).json
    rel = client.post(f"/api/v1/cases/{first['case_id']}/release", headers=headers)
    assert rel.status_code == 200 and rel.json["queue_state"] == "waiting"
    second = client.post(
        f"/api/v1/tasks/{task['name']}/queue/claim",
        json={"exclude": [first["case_id"]]},
        headers=headers,
    ).json
    assert second["case_id"] != first["case_id"] and second["case_id"] in ids
    client.post(f"/api/v1/cases/{second['case_id']}/review", json={"label": "bad"}, headers=headers)
    undone = client.post(f"/api/v1/cases/{second['case_id']}/undo", headers=headers)
    assert undone.status_code == 200
    assert undone.json["queue_state"] == "leased" and undone.json["lease_expires_at"]
    assert undone.json["reviews"][0]["retracted"] is True
    twice = client.post(f"/api/v1/cases/{second['case_id']}/undo", headers=headers)
    assert twice.status_code == 409


def test_validation_errors(browser_user, queued, task):
    (case_id,) = queued(1)
    client, headers, _ = browser_user()
    client.post(f"/api/v1/tasks/{task['name']}/queue/claim", headers=headers)
    bad = client.post(f"/api/v1/cases/{case_id}/review", json={"label": "nope"}, headers=headers)
    assert bad.status_code == 422
    extra = client.post(
        f"/api/v1/cases/{case_id}/review", json={"label": "good", "x": 1}, headers=headers
    )
    assert extra.status_code == 422
    missing = client.post("/api/v1/cases/0000/review", json={"label": "good"}, headers=headers)
    assert missing.status_code == 404


def test_csrf_required_for_session_calls(browser_user, queued, task):
    queued(1)
    client, _headers, _ = browser_user()
    resp = client.post(f"/api/v1/tasks/{task['name']}/queue/claim")
    assert resp.status_code == 403
    resp = client.post(
        f"/api/v1/tasks/{task['name']}/queue/claim", headers={"X-CSRFToken": "forged"}
    )
    assert resp.status_code == 403


def test_roles_and_scope(browser_user, queued, task, tokens, client):
    queued(1)
    name = task["name"]
    analyst, a_headers, _ = browser_user("analyst")
    assert analyst.post(f"/api/v1/tasks/{name}/queue/claim", headers=a_headers).status_code == 403
    assert analyst.get(f"/api/v1/tasks/{name}/queue").status_code == 200
    # Tokens are machines: they may read the queue but never hold a lease.
    assert client.get(f"/api/v1/tasks/{name}/queue", headers=auth(tokens["app"])).status_code == 403
    resp = client.post(f"/api/v1/tasks/{name}/queue/claim", headers=auth(tokens["reviewer"]))
    assert resp.status_code == 403
    assert client.post(f"/api/v1/tasks/{name}/queue/claim").status_code == 401


def test_task_scope_is_enforced(browser_user, queued, task, db):
    from service.models import User

    queued(1)
    client, headers, user = browser_user()
    db.execute(update(User).where(User.id == user.id).values(task_scope=["another-task"]))
    db.commit()
    name = task["name"]
    assert client.post(f"/api/v1/tasks/{name}/queue/claim", headers=headers).status_code == 403
    assert client.get(f"/api/v1/tasks/{name}/queue").status_code == 403


def test_queue_listing_filters_over_http(browser_user, queued, task, db):
    ids = queued(3)
    db.execute(update(Case).where(Case.id == ids[2]).values(audit=True))
    db.commit()
    client, _headers, _ = browser_user("analyst")
    name = task["name"]
    page = client.get(f"/api/v1/tasks/{name}/queue?per_page=2").json
    assert page["total"] == 3 and len(page["items"]) == 2 and page["pages"] == 2
    audited = client.get(f"/api/v1/tasks/{name}/queue?audit=true").json
    assert [i["case_id"] for i in audited["items"]] == [ids[2]]
    reasons = client.get(f"/api/v1/tasks/{name}/queue?reason=forced").json
    assert reasons["total"] == 0
    bad = client.get(f"/api/v1/tasks/{name}/queue?state=lost")
    assert bad.status_code == 422 and bad.json["error"]["code"] == "validation_error"
