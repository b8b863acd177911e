"""Blind review (docs/review.md, "Blind review"): what a reviewer's client gets is the same
for an audited case and any other one, without the model's suggestion; and the optional
second blind review of a share of audits, with the reviewers' agreement reported."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from service.db import utcnow
from service.models import AuditEvent, Case, Task
from service.policy import Policy, audit_draw
from service.services import review
from service.services.audit import SYSTEM
from service.services.tasks import update_task
from tests.helpers import audited_auto_answer, set_on_policy_page

#: Words that would tell a reviewer the case is an audit, or what the model said.
TELLS = ("audit", "suggest", "confiden", "threshold", "score", "model", "quality check")


def _set(db: Any, case_id: str, **values: Any) -> None:
    db.execute(update(Case).where(Case.id == case_id).values(**values))
    db.commit()


def _audited_auto_answer(db: Any, case_id: str) -> None:
    _set(db, case_id, **audited_auto_answer())


def _low_confidence(db: Any, case_id: str) -> None:
    _set(
        db,
        case_id,
        reason="low_confidence",
        suggestion_label="bad",
        confidence=0.61,
        scores={"good": 0.39, "bad": 0.61},
        model_version=1,
        threshold=0.9,
    )


def _tells(view: dict[str, Any]) -> list[str]:
    """Tell-tale words anywhere in a reviewer's view but the case's own input and the
    reviewer-facing reason (``low_confidence``, the same for every audit)."""
    text = json.dumps({k: v for k, v in view.items() if k not in ("input", "reason")}).lower()
    return [w for w in TELLS if w in text]


def _shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, not contents."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def _claim(client: Any, headers: dict[str, str], task: str) -> dict[str, Any]:
    resp = client.post(f"/api/v1/tasks/{task}/queue/claim", headers=headers)
    assert resp.status_code == 200, resp.json
    return resp.json


def test_an_audit_claimed_over_the_api_looks_like_any_other_case(browser_user, queued, task, db):
    audit_id, plain_id = queued(2)
    _audited_auto_answer(db, audit_id)
    _low_confidence(db, plain_id)
    held_id = queued(1)[0]  # audit_mode hold: a confident audited case waiting for its person
    _set(db, held_id, audit=True, reason="audit", suggestion_label="good", confidence=0.95)
    name = task["name"]
    views = {}
    for case_id in (audit_id, plain_id, held_id):
        client, headers, _ = browser_user()
        _set(db, case_id, created_at=utcnow().replace(year=2020))  # the next one claimed
        view = _claim(client, headers, name)
        assert view["case_id"] == case_id
        views[case_id] = view
        # Reading the case back, as a reviewer, tells no more.
        again = client.get(f"/api/v1/cases/{case_id}", headers=headers).json
        assert not _tells(again), again
        assert again["reason"] == "low_confidence"
    audit_view, plain_view, held_view = views[audit_id], views[plain_id], views[held_id]
    assert _shape(audit_view) == _shape(plain_view) == _shape(held_view)
    for view in views.values():
        assert view["reason"] == "low_confidence"
        assert set(view) >= {"case_id", "input", "lease_expires_at"}
        assert not _tells(view), view
        for key in ("status", "route", "label", "final_label", "reviews_required", "resolved_by"):
            assert key not in view


def test_the_answer_to_a_decision_tells_nothing_of_the_case(browser_user, queued, task, db):
    (case_id,) = queued(1)
    _audited_auto_answer(db, case_id)
    client, headers, _ = browser_user()
    _claim(client, headers, task["name"])
    resp = client.post(f"/api/v1/cases/{case_id}/review", json={"label": "bad"}, headers=headers)
    assert resp.status_code == 200
    assert set(resp.json) == {"case_id", "review_id", "label", "decided_at", "undo_until"}
    # The case was corrected (the model said good): the reviewer is not told.
    assert db.get(Case, case_id).status == "corrected"
    undone = client.post(f"/api/v1/cases/{case_id}/undo", headers=headers).json
    assert not _tells(undone), undone
    assert [r["retracted"] for r in undone["reviews"]] == [True]


def test_reviewers_get_the_blind_queue_listing(browser_user, queued, task, db):
    ids = queued(3)
    _audited_auto_answer(db, ids[0])
    name = task["name"]
    client, _headers, _ = browser_user()
    page = client.get(f"/api/v1/tasks/{name}/queue").json
    assert page["total"] == 3
    for item in page["items"]:
        assert not {"audit", "status", "reason", "suggestion", "reviews_required"} & set(item)
    for query in ("audit=true", "status=auto", "reason=confident"):
        refused = client.get(f"/api/v1/tasks/{name}/queue?{query}")
        assert refused.status_code == 403, query
    analyst, _, _ = browser_user("analyst")
    full = analyst.get(f"/api/v1/tasks/{name}/queue?audit=true").json
    assert [i["case_id"] for i in full["items"]] == [ids[0]]
    assert full["items"][0]["suggestion"]["label"] == "good"


def test_the_review_page_tells_no_audit_and_offers_no_suggestion(browser_user, queued, task, db):
    (case_id,) = queued(1)
    _audited_auto_answer(db, case_id)
    client, _headers, _ = browser_user()
    page = client.get(f"/tasks/{task['name']}/review").get_data(as_text=True)
    lowered = page.lower()
    for tell in ("audit", "quality check", "suggestion", "accept"):
        assert tell not in lowered, tell
    case_page = client.get(f"/cases/{case_id}").get_data(as_text=True).lower()
    for tell in ("audit", "0.97", "suggestion", "threshold"):
        assert tell not in case_page, tell
    queue_page = client.get(f"/tasks/{task['name']}/queue?audit=true").get_data(as_text=True)
    assert "Filters ignored" in queue_page and ">Audit<" not in queue_page


def test_second_blind_review_of_a_share_of_audits_and_agreement(db, task, people, queued, client):
    (zero,) = queued(1)  # at the default rate 0, an audit needs one reviewer
    _set(db, zero, audit=True)
    actor = people()
    review.claim(db(), task["name"], actor)
    assert review.submit_review(db(), zero, "good", actor).resolved
    assert db.get(Case, zero).reviews_required == 1
    row = db.scalar(select(Task).where(Task.name == task["name"]))
    update_task(db(), row, {"policy": {"second_review_rate": 1.0}}, SYSTEM)
    db.commit()
    audited, plain = queued(2)
    _set(db, audited, audit=True, created_at=utcnow() - timedelta(hours=1))
    first, second = people(), people()
    claimed = review.claim(db(), task["name"], first)
    assert claimed.case.id == audited
    decision = review.submit_review(db(), audited, "good", first)
    db.commit()
    assert not decision.resolved  # a second person must decide too
    case = db.get(Case, audited)
    assert case.reviews_required == 2 and case.queue_state == "waiting"
    assert case.human_label is None
    event = db.scalar(
        select(AuditEvent).where(
            AuditEvent.case_id == audited, AuditEvent.action == "case.reviewed"
        )
    )
    assert event.details["second_review"] is True
    # The second reviewer sees nothing of the first verdict.
    claimed = review.claim(db(), task["name"], second)
    assert claimed.case.id == audited
    view = review.claimed_view(db(), claimed, second.id)
    assert view["reviews"] == [] and "good" not in json.dumps(view["reviews"])
    decision = review.submit_review(db(), audited, "good", second)
    db.commit()
    assert decision.resolved and db.get(Case, audited).human_label == "good"
    # A case not drawn for audit needs one reviewer, whatever the rate.
    claimed = review.claim(db(), task["name"], first)
    assert claimed.case.id == plain
    assert review.submit_review(db(), plain, "bad", first).resolved
    db.commit()

    # Agreement on doubly reviewed audits, reported with its n (stats API, analysts).
    (another,) = queued(1)
    _set(db, another, audit=True)
    review.claim(db(), task["name"], first)
    review.submit_review(db(), another, "good", first)
    review.claim(db(), task["name"], second)
    review.submit_review(db(), another, "bad", second)  # disagree: a third is asked
    db.commit()
    from tests.helpers import auth, make_token

    stats = client.get(
        f"/api/v1/tasks/{task['name']}/stats", headers=auth(make_token("analyst"))
    ).json
    agreement = stats["audit_agreement"]
    assert (agreement["n"], agreement["agreed"], agreement["estimate"]) == (2, 1, 0.5)
    assert 0.0 <= agreement["lower"] < 0.5 < agreement["upper"] <= 1.0


def test_second_review_draw_is_uniform_and_independent_of_the_audit_draw():
    """Simulation: 20,000 ids at a second-review rate of 0.25 and an audit rate of 0.25.
    The share drawn overall and among the audited must both be 0.25 (±4 standard errors:
    0.012 overall, 0.025 among ~5,000 audited); a second draw that reused the audit draw
    would give 1.0 among the audited."""
    from service.models import new_id

    ids = [new_id() for _ in range(20_000)]
    drawn = [review.second_review_draw(i) < 0.25 for i in ids]
    audited = [audit_draw(i) < 0.25 for i in ids]
    assert abs(sum(drawn) / len(ids) - 0.25) < 0.012
    among = [d for d, a in zip(drawn, audited, strict=True) if a]
    assert abs(sum(among) / len(among) - 0.25) < 0.025
    assert all(review.second_review_draw(i) == review.second_review_draw(i) for i in ids[:50])


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_second_review_rate_is_validated(client, task, tokens, bad):
    from tests.helpers import auth

    with pytest.raises(ValueError):
        Policy(second_review_rate=bad)
    if bad != bad:  # NaN cannot be sent as JSON
        return
    resp = client.patch(
        f"/api/v1/tasks/{task['name']}",
        json={"policy": {"second_review_rate": bad}},
        headers=auth(tokens["admin"]),
    )
    assert resp.status_code == 422
    assert "second_review_rate" in resp.json["error"]["details"]["policy"]
    ok = client.patch(
        f"/api/v1/tasks/{task['name']}",
        json={"policy": {"second_review_rate": 0.2}},
        headers=auth(tokens["admin"]),
    )
    assert ok.status_code == 200 and ok.json["policy"]["second_review_rate"] == 0.2


def test_admin_sets_the_second_review_rate_on_the_policy_page(browser_user, task, db):
    client, headers, _ = browser_user("admin")
    set_on_policy_page(
        client, headers, db, task["name"], "second_review_rate", bad="2", good="0.25", stored=0.25
    )
