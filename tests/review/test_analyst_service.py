"""Service functions behind the analyst pages (issue #19), on both backends: claiming a
chosen case, admins releasing cases in bulk, searching the queue, and a task's health."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from service.db import utcnow
from service.errors import Conflict, Forbidden, NotFound, ValidationFailed
from service.models import AuditEvent, Case, Task
from service.services import review
from service.services.stats import task_health
from tests.helpers import audited_auto_answer


def _events(db: Any, case_id: str, action: str) -> list[AuditEvent]:
    return list(
        db.scalars(
            select(AuditEvent).where(AuditEvent.case_id == case_id, AuditEvent.action == action)
        )
    )


def test_claim_case_leases_the_chosen_case_and_gives_back_the_one_held(db, task, people, queued):
    ids = queued(2)
    me = people()
    first = review.claim(db(), task["name"], me).case.id  # the next one, by the queue
    (chosen,) = set(ids) - {first}
    claimed = review.claim_case(db(), chosen, me)
    db.commit()
    assert claimed.case.id == chosen and not claimed.renewed
    case, held = db.get(Case, chosen), db.get(Case, first)
    assert case.queue_state == "leased" and case.lease_owner_id == me.id
    assert case.status == "in_review" and case.lease_expires_at > utcnow()
    assert held.queue_state == "waiting" and held.lease_owner_id is None  # one lease per task
    (event,) = _events(db, chosen, "case.claimed")
    assert event.details["chosen"] is True
    assert _events(db, first, "case.released")[0].details == {"implicit": True}
    # The review page then serves the case the reviewer holds.
    assert review.claim(db(), task["name"], me).case.id == chosen
    # Claiming it again renews the lease, no second event.
    assert review.claim_case(db(), chosen, me).renewed
    db.commit()
    assert len(_events(db, chosen, "case.claimed")) == 1


def test_claim_case_refuses_what_cannot_be_reviewed_and_changes_nothing(db, task, people, queued):
    taken, done = queued(2)
    me, other = people(), people()
    review.claim_case(db(), taken, other)
    review.claim_case(db(), done, me)
    review.submit_review(db(), done, "good", me)
    db.commit()
    with pytest.raises(Conflict) as leased:
        review.claim_case(db(), taken, me)
    assert leased.value.details["reason"] == "leased"
    with pytest.raises(Conflict) as resolved:
        review.claim_case(db(), done, me)
    assert resolved.value.details["reason"] == "already_resolved"
    db.rollback()
    assert db.get(Case, taken).lease_owner_id == other.id
    with pytest.raises(Forbidden):
        review.claim_case(db(), taken, people(scope=["another-task"]))
    db.rollback()
    assert not review.reviewable_by(db.get(Case, taken), me.id)
    assert review.reviewable_by(db.get(Case, taken), other.id)


def test_admins_release_leased_cases_in_bulk_each_recorded(db, task, people, queued):
    a, b, waiting = queued(3)
    r1, r2, admin = people(), people(), people("admin")
    review.claim_case(db(), a, r1)
    review.claim_case(db(), b, r2)
    db.commit()
    with pytest.raises(Forbidden):
        review.release_cases(db(), task["name"], [a], people("analyst"))
    db.rollback()
    # One id not leased: refused, nothing released.
    with pytest.raises(Conflict):
        review.release_cases(db(), task["name"], [a, waiting], admin)
    db.rollback()
    assert db.get(Case, a).queue_state == "leased"
    with pytest.raises(NotFound):
        review.release_cases(db(), task["name"], [a, "nope"], admin)
    db.rollback()
    with pytest.raises(ValidationFailed):
        review.release_cases(db(), task["name"], [], admin)
    db.rollback()
    assert review.release_cases(db(), task["name"], [a, b, a], admin) == [a, b]
    db.commit()
    for case_id, owner in ((a, r1), (b, r2)):
        case = db.get(Case, case_id)
        assert case.queue_state == "waiting" and case.lease_owner_id is None
        assert case.status == "pending"
        (event,) = _events(db, case_id, "case.released")
        assert event.details == {"by_admin": True, "reviewer_id": owner.id}
        assert event.actor == admin.name


def test_the_queue_is_searched_by_external_id_and_field_value(db, task, people, queued):
    ids = queued(4)
    db.execute(
        update(Case)
        .where(Case.id == ids[2])
        .values(input={"review": "Late.", "state": "NV", "amount": 700.0, "verified": False})
    )
    db.commit()
    analyst = people("analyst")

    def found(**flt: Any) -> list[str]:
        page = review.queue_page(db(), task["name"], analyst, review.QueueFilter(**flt))
        return [item["case_id"] for item in page["items"]]

    assert found(external_id="x1") == [ids[1]]
    assert found(external_id="nobody") == []
    assert found(field="state", value="NV") == [ids[2]]
    assert found(field="amount", value="700") == [ids[2]]
    assert found(field="verified", value="false") == [ids[2]]
    assert sorted(found(field="state", value="CA")) == sorted([ids[0], ids[1], ids[3]])
    for bad in (
        {"field": "salary", "value": "1"},
        {"field": "amount", "value": "a lot"},
        {"field": "verified", "value": "maybe"},
        {"field": "state"},
    ):
        with pytest.raises(ValidationFailed):
            found(**bad)


def test_task_health_flags_fallback_and_live_error_above_target(db, task, queued):
    row = db.scalar(select(Task).where(Task.name == task["name"]))
    healthy = task_health(db(), row)
    assert healthy["live_error"] is None and not healthy["above_target"]
    assert not healthy["fallback"]
    ids = queued(4)
    for i, case_id in enumerate(ids):
        values = audited_auto_answer() | {"human_label": "bad" if i == 0 else "good"}
        db.execute(update(Case).where(Case.id == case_id).values(**values, queue_state=None))
    db.execute(update(Task).where(Task.id == row.id).values(automation_state="fallback"))
    db.commit()
    db.refresh(row)
    health = task_health(db(), row)
    assert health["fallback"] and health["state"] == "fallback"
    assert health["live_error"] == pytest.approx(0.25)
    assert health["live_error_n"] == 4
    assert health["above_target"] is (0.25 > health["target"])
