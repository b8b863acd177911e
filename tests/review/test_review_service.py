"""The review engine on real PostgreSQL: order, leases, exactly-once, undo, agreement."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from service.db import utcnow
from service.errors import Conflict, Forbidden, ValidationFailed
from service.models import AuditEvent, Case, Review, Task, WebhookDelivery
from service.services import audit, review
from service.services.audit import SYSTEM
from service.services.cases import case_detail, record_outcome
from service.services.tasks import update_task
from service.services.training import labels_since_training


def _set(db: Any, case_id: str, **values: Any) -> None:
    db.execute(update(Case).where(Case.id == case_id).values(**values))
    db.commit()


def _answer_automatically(db: Any, case_id: str, **values: Any) -> None:
    """Turn a queued case into an audited automatic answer ("good" at 0.99), as the router
    would have stored it."""
    _set(
        db,
        case_id,
        **{
            "audit": True,
            "status": "auto",
            "route": "auto",
            "reason": "confident",
            "suggestion_label": "good",
            "confidence": 0.99,
            "final_label": "good",
            "label_source": "model",
            **values,
        },
    )


def _task(db: Any, name: str) -> Task:
    return db.scalar(select(Task).where(Task.name == name))


def test_claim_order_sla_then_oldest_and_audits_wait_their_turn(db, task, people, queued):
    ids = queued(5)
    old, mid, audited_auto, flagged_pending, newest = ids
    now = utcnow()
    _set(db, old, created_at=now - timedelta(days=3))  # past the default 1-day SLA
    _set(db, mid, created_at=now - timedelta(hours=2))
    _set(db, flagged_pending, created_at=now - timedelta(hours=1), audit=True)
    _set(db, newest, created_at=now - timedelta(minutes=30))
    _answer_automatically(db, audited_auto)
    actor = people()
    order = []
    for _ in range(5):
        claimed = review.claim(db(), task["name"], actor)
        assert claimed is not None
        order.append(claimed.case.id)
        review.submit_review(db(), claimed.case.id, "good", actor)
        db.commit()
    # Audits wait their turn by age, audited automatic answers too: one served ahead of older
    # cases would tell its reviewer it is an audit (docs/review.md, "Blind review").
    assert order == [old, mid, flagged_pending, newest, audited_auto]
    assert review.claim(db(), task["name"], actor) is None


def test_claim_leases_and_sets_status(db, task, people, queued):
    (case_id,) = queued(1)
    actor = people()
    claimed = review.claim(db(), task["name"], actor)
    db.commit()
    case = db.get(Case, case_id)
    assert claimed.case.id == case_id
    assert case.status == "in_review" and case.queue_state == "leased"
    assert case.lease_owner_id == actor.id
    assert case.lease_expires_at > utcnow() + timedelta(seconds=290)
    # A second reviewer gets nothing while the lease is live.
    assert review.claim(db(), task["name"], people()) is None
    # Claiming again returns the case the reviewer already holds (reload, second tab).
    again = review.claim(db(), task["name"], actor)
    assert again.case.id == case_id and again.renewed


def test_expired_lease_is_claimable_and_late_submit_conflicts(db, task, people, queued):
    (case_id,) = queued(1)
    first, second = people(), people()
    review.claim(db(), task["name"], first)
    db.commit()
    _set(db, case_id, lease_expires_at=utcnow() - timedelta(seconds=1))
    claimed = review.claim(db(), task["name"], second)
    db.commit()
    assert claimed.case.id == case_id
    assert db.scalar(
        select(AuditEvent).where(
            AuditEvent.case_id == case_id, AuditEvent.action == "case.lease_expired"
        )
    )
    with pytest.raises(Conflict) as exc:
        review.submit_review(db(), case_id, "bad", first)
    assert exc.value.details["reason"] == "lease_lost"
    db.rollback()
    review.submit_review(db(), case_id, "good", second)
    db.commit()
    assert db.get(Case, case_id).final_label == "good"


def test_own_expired_lease_is_a_conflict(db, task, people, queued):
    (case_id,) = queued(1)
    actor = people()
    review.claim(db(), task["name"], actor)
    db.commit()
    _set(db, case_id, lease_expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(Conflict) as exc:
        review.submit_review(db(), case_id, "good", actor)
    assert exc.value.details["reason"] == "lease_expired"


def test_resolve_records_everything_once(db, task, people, queued):
    (case_id,) = queued(1)
    actor = people()
    review.claim(db(), task["name"], actor)
    decision = review.submit_review(db(), case_id, "bad", actor, comment="missed payments")
    db.commit()
    case = db.get(Case, case_id)
    assert decision.resolved and decision.event == "case.resolved"
    assert case.status == "resolved" and case.queue_state is None
    assert case.final_label == "bad" and case.label_source == "reviewer"
    assert case.human_label == "bad" and case.human_labelled_at is not None
    assert case.resolved_by_user_id == actor.id and case.resolved_at is not None
    (row,) = db.scalars(select(Review).where(Review.case_id == case_id)).all()
    assert row.comment == "missed payments" and row.duration_ms is not None
    assert row.claimed_at is not None and row.agreed_with_model is None  # no model yet
    assert labels_since_training(db(), _task(db, task["name"]).id) == 1
    actions = db.scalars(select(AuditEvent.action).where(AuditEvent.case_id == case_id)).all()
    assert "case.claimed" in actions and "case.resolved" in actions
    with pytest.raises(Conflict) as exc:
        review.submit_review(db(), case_id, "good", actor)
    assert exc.value.details["reason"] == "already_resolved"
    db.rollback()
    assert db.get(Case, case_id).final_label == "bad"


def _stored(db: Any, model: Any, key: Any) -> dict[str, Any]:
    """The row as the database holds it (the session keeps objects across commits)."""
    row = db.execute(select(model).where(model.id == key).execution_options(populate_existing=True))
    obj = row.scalar_one()
    return {c: getattr(obj, c) for c in model.__table__.columns.keys()}


def test_a_decision_stores_what_the_session_holds(db, task, people, queued):
    """A decision writes its review, the case and the audit events by table statements, not
    through the unit of work, and tells the session what it wrote: what the session holds
    afterwards (what webhooks, the live watch and the answer read) must be the rows. A
    resolution and an audited automatic answer corrected, each with its trail in order."""
    plain, audited = queued(2)
    _answer_automatically(db, audited, confidence=0.97, resolved_at=utcnow())
    actor = people()
    outcomes = {}
    for _ in range(2):
        claimed = review.claim(db(), task["name"], actor)
        decision = review.submit_review(db(), claimed.case.id, "bad", actor, comment="why")
        held_case = {c: getattr(decision.case, c) for c in Case.__table__.columns.keys()}
        held_review = {c: getattr(decision.review, c) for c in Review.__table__.columns.keys()}
        assert [r.id for r in decision.case.reviews] == [decision.review.id]
        db.commit()
        assert _stored(db, Case, claimed.case.id) == held_case
        assert _stored(db, Review, decision.review.id) == held_review
        outcomes[claimed.case.id] = decision.event
        trail = db.execute(
            select(AuditEvent.action, AuditEvent.details)
            .where(AuditEvent.case_id == claimed.case.id)
            .order_by(AuditEvent.id)
        ).all()
        assert [a for a, _ in trail][-3:] == ["case.claimed", "case.reviewed", decision.event]
        assert trail[-2][1]["review_id"] == decision.review.id == trail[-1][1]["review_id"]
    assert outcomes == {plain: "case.resolved", audited: "case.corrected"}
    assert _stored(db, Case, plain)["status"] == "resolved"
    assert _stored(db, Case, audited)["status"] == "corrected"


def test_events_written_at_once_follow_those_recorded_before(db, people):
    """``audit.write_now`` writes after what the unit of work still holds: the trail is in
    the order things happened, even where the session's autoflush is off."""
    actor = people()
    session = db()
    with session.no_autoflush:
        audit.record(session, "case.released", actor, details={"step": 1})
        audit.write_now(
            session,
            actor,
            [("case.claimed", {"step": 2}), ("case.reviewed", {"step": 3})],
            task_id=None,
            case_id="ordered",
        )
        audit.record(session, "case.released", actor, details={"step": 4})
    db.commit()
    steps = db.scalars(
        select(AuditEvent.details).where(AuditEvent.actor == actor.name).order_by(AuditEvent.id)
    ).all()
    assert [d["step"] for d in steps] == [1, 2, 3, 4]


def test_unknown_label_is_rejected_and_nothing_stored(db, task, people, queued):
    (case_id,) = queued(1)
    actor = people()
    review.claim(db(), task["name"], actor)
    db.commit()
    with pytest.raises(ValidationFailed):
        review.submit_review(db(), case_id, "maybe", actor)
    db.rollback()
    assert db.scalar(select(Review.id).where(Review.case_id == case_id)) is None


def test_webhook_fired_when_configured(db, task, people, queued):
    update_task(db(), _task(db, task["name"]), {"webhook": {"url": "http://hook.test/x"}}, SYSTEM)
    db.commit()
    (case_id,) = queued(1)
    actor = people()
    review.claim(db(), task["name"], actor)
    review.submit_review(db(), case_id, "good", actor)
    db.commit()
    events = db.scalars(select(WebhookDelivery.event_type)).all()
    assert events == ["case.resolved"]


def test_audited_auto_answer_corrected_or_confirmed(db, task, people, queued):
    a, b = queued(2)
    for cid in (a, b):
        _answer_automatically(db, cid, confidence=0.97, resolved_at=utcnow())
    update_task(db(), _task(db, task["name"]), {"webhook": {"url": "http://hook.test/x"}}, SYSTEM)
    db.commit()
    actor = people()
    a = review.claim(db(), task["name"], actor).case.id
    review.submit_review(db(), a, "bad", actor)
    b = review.claim(db(), task["name"], actor).case.id
    review.submit_review(db(), b, "good", actor)
    db.commit()
    corrected, confirmed = db.get(Case, a), db.get(Case, b)
    assert corrected.status == "corrected" and corrected.final_label == "bad"
    assert corrected.label_source == "reviewer" and corrected.human_label == "bad"
    assert confirmed.status == "auto" and confirmed.final_label == "good"
    assert confirmed.label_source == "model" and confirmed.human_label == "good"
    assert confirmed.queue_state is None
    assert db.scalars(select(WebhookDelivery.event_type)).all() == ["case.corrected"]
    agreed = db.scalars(select(Review.agreed_with_model).order_by(Review.id)).all()
    assert agreed == [False, True]


def test_release_returns_case_and_exclude_skips_it(db, task, people, queued):
    ids = queued(2)
    actor = people()
    first_id = review.claim(db(), task["name"], actor).case.id
    (second_id,) = set(ids) - {first_id}
    review.release(db(), first_id, actor)
    db.commit()
    case = db.get(Case, first_id)
    assert case.queue_state == "waiting" and case.status == "pending"
    assert case.lease_owner_id is None
    claimed = review.claim(db(), task["name"], actor, exclude=[first_id])
    assert claimed.case.id == second_id
    with pytest.raises(Conflict):
        review.release(db(), first_id, actor)  # not leased to this reviewer


def test_undo_retracts_and_returns_the_case_leased(db, task, people, queued):
    (case_id,) = queued(1)
    actor = people()
    review.claim(db(), task["name"], actor)
    review.submit_review(db(), case_id, "bad", actor)
    db.commit()
    case = review.undo(db(), case_id, actor)
    db.commit()
    assert case.status == "in_review" and case.queue_state == "leased"
    assert case.lease_owner_id == actor.id and case.final_label is None
    assert case.human_label is None
    (row,) = db.scalars(select(Review).where(Review.case_id == case_id)).all()
    assert row.retracted_at is not None  # kept, never deleted
    review.submit_review(db(), case_id, "good", actor)
    db.commit()
    case = db.get(Case, case_id)
    assert case.final_label == "good" and case.human_label == "good"
    assert len(db.scalars(select(Review).where(Review.case_id == case_id)).all()) == 2
    # The label consequences counted once, not once per decision.
    assert labels_since_training(db(), _task(db, task["name"]).id) == 1


def test_an_undone_correction_then_confirmed_is_announced_again(db, task, people, queued):
    """The application was told ``case.corrected`` (bad); the reviewer undoes it and confirms
    the model (good): the latest event must carry the model's answer, or the application
    keeps a label Tandem no longer holds (docs/review.md, "Undo")."""
    (case_id,) = queued(1)
    _answer_automatically(db, case_id, confidence=0.97, resolved_at=utcnow())
    update_task(db(), _task(db, task["name"]), {"webhook": {"url": "http://hook.test/x"}}, SYSTEM)
    db.commit()
    actor = people()
    review.claim(db(), task["name"], actor)
    review.submit_review(db(), case_id, "bad", actor)
    db.commit()
    review.undo(db(), case_id, actor)
    db.commit()
    review.submit_review(db(), case_id, "good", actor)
    db.commit()
    sent = db.execute(select(WebhookDelivery.event_type, WebhookDelivery.payload)).all()
    assert [kind for kind, _ in sent] == ["case.corrected", "case.resolved"]
    latest = sent[-1][1]["data"]
    assert latest["final_label"] == "good" and latest["resolved_by"] == "model"
    assert latest["reviews"] == []  # the model's answer stands: no reviewer decided it
    confirmed = db.scalars(
        select(AuditEvent.details)
        .where(AuditEvent.case_id == case_id, AuditEvent.action == "case.resolved")
        .order_by(AuditEvent.id)
    ).all()
    assert confirmed[-1]["audit_confirmed"] and confirmed[-1]["correction_undone"]
    # The application's own outcome after the undo, then the verdict: the same.
    (reported,) = queued(1)
    _answer_automatically(db, reported, confidence=0.97, resolved_at=utcnow())
    review.claim(db(), task["name"], actor)
    review.submit_review(db(), reported, "bad", actor)
    db.commit()
    review.undo(db(), reported, actor)
    record_outcome(db(), reported, "good", SYSTEM)
    db.commit()
    review.submit_review(db(), reported, "good", actor)
    db.commit()
    last = db.execute(
        select(WebhookDelivery.event_type, WebhookDelivery.payload).order_by(
            WebhookDelivery.id.desc()
        )
    ).first()
    assert last is not None and last[0] == "case.resolved"
    assert last[1]["data"]["case_id"] == reported and last[1]["data"]["final_label"] == "good"
    # A confirmation with no correction before it tells the application nothing, as before.
    (other,) = queued(1)
    _answer_automatically(db, other, confidence=0.97, resolved_at=utcnow())
    review.claim(db(), task["name"], actor)
    review.submit_review(db(), other, "good", actor)
    db.commit()
    assert db.scalar(select(func.count()).select_from(WebhookDelivery)) == 4


def test_the_application_sees_only_the_standing_verdicts(db, task, people, queued):
    """``GET /cases/{id}`` for an application (and a webhook's payload) lists the reviews
    that decided the final label: an undone one is not among them; admins see it."""
    (case_id,) = queued(1)
    actor = people()
    review.claim(db(), task["name"], actor)
    review.submit_review(db(), case_id, "bad", actor)
    db.commit()
    review.undo(db(), case_id, actor)
    decision = review.submit_review(db(), case_id, "good", actor)
    db.commit()
    app_view = case_detail(db(), decision.case)
    assert [(r["label"], r["retracted"]) for r in app_view["reviews"]] == [("good", False)]
    admin_view = case_detail(db(), decision.case, everything=True)
    assert [(r["label"], r["retracted"]) for r in admin_view["reviews"]] == [
        ("bad", True),
        ("good", False),
    ]


def test_undo_refused_for_others_and_after_window(db, task, people, queued):
    (case_id,) = queued(1)
    actor, other = people(), people()
    review.claim(db(), task["name"], actor)
    review.submit_review(db(), case_id, "bad", actor)
    db.commit()
    with pytest.raises(Conflict) as exc:
        review.undo(db(), case_id, other)
    assert exc.value.details["reason"] == "nothing_to_undo"
    db.rollback()
    db.execute(update(Review).values(decided_at=utcnow() - timedelta(seconds=301)))
    db.commit()
    with pytest.raises(Conflict) as exc:
        review.undo(db(), case_id, actor)
    assert exc.value.details["reason"] == "undo_window_passed"


def test_two_reviewers_agree(db, task, people, queued):
    update_task(db(), _task(db, task["name"]), {"review": {"reviewers_per_case": 2}}, SYSTEM)
    db.commit()
    (case_id,) = queued(1)
    a, b = people(), people()
    review.claim(db(), task["name"], a)
    first = review.submit_review(db(), case_id, "good", a)
    db.commit()
    assert not first.resolved
    case = db.get(Case, case_id)
    assert case.status == "pending" and case.queue_state == "waiting"
    assert case.human_label is None
    # The same reviewer never gets a case they already decided.
    assert review.claim(db(), task["name"], a) is None
    review.claim(db(), task["name"], b)
    second = review.submit_review(db(), case_id, "good", b)
    db.commit()
    assert second.resolved
    case = db.get(Case, case_id)
    assert case.status == "resolved" and case.final_label == "good"
    stats = review.agreement_stats(db(), _task(db, task["name"]))
    assert stats["cases"] == 1 and stats["case_agreement_rate"] == 1.0


def test_a_reviewer_who_decided_the_head_of_the_queue_gets_the_next_case(db, task, people, queued):
    """The claim looks at the head of the queue first; a case the claimer already decided
    (it waits for a second opinion) is passed over for the next one, not refused."""
    update_task(db(), _task(db, task["name"]), {"review": {"reviewers_per_case": 2}}, SYSTEM)
    db.commit()
    # Three arrivals, oldest first (cases of one batch share an arrival time and are served in
    # no guaranteed order among themselves).
    (first,), (second,), (third,) = queued(1), queued(1), queued(1)
    a, b = people(), people()
    assert review.claim(db(), task["name"], a).case.id == first
    review.submit_review(db(), first, "good", a)
    db.commit()
    assert db.get(Case, first).queue_state == "waiting"  # still the head of the queue
    assert review.claim(db(), task["name"], a).case.id == second
    review.submit_review(db(), second, "good", a)
    db.commit()
    assert review.claim(db(), task["name"], a).case.id == third
    assert review.claim(db(), task["name"], b).case.id == first


def test_the_claim_checks_the_reviews_under_the_lock_in_a_fresh_session(db, task, people, queued):
    """The lease's UPDATE carries the "already reviewed" check and says whether the case has
    reviews at all (the claim no longer reads them first): a retracted review of one's own
    does not keep a case from its reviewer, and is shown to them; another reviewer's
    verdict is never shown; one's own active review passes the case over."""
    update_task(db(), _task(db, task["name"]), {"review": {"reviewers_per_case": 2}}, SYSTEM)
    db.commit()
    (first,), (second,) = queued(1), queued(1)
    a, b = people(), people()
    assert review.claim(db(), task["name"], a).case.id == first
    review.submit_review(db(), first, "good", a)  # waits for a second opinion
    db.commit()
    review.undo(db(), first, a)
    review.release(db(), first, a)
    db.commit()
    db.remove()  # a new request: nothing of the case in the session

    claimed = review.claim(db(), task["name"], a)
    assert claimed is not None and claimed.case.id == first
    view = review.claimed_view(db(), claimed, a.id)
    assert [r["retracted"] for r in view["reviews"]] == [True]
    review.submit_review(db(), first, "bad", a)
    db.commit()
    db.remove()

    assert review.claim(db(), task["name"], a).case.id == second  # decided the head: passed over
    db.commit()
    db.remove()
    claimed = review.claim(db(), task["name"], b)
    assert claimed is not None and claimed.case.id == first
    assert review.claimed_view(db(), claimed, b.id)["reviews"] == []
    assert claimed.case.queue_state == "leased" and claimed.case.lease_owner_id == b.id
    db.commit()
    db.remove()
    case = db.get(Case, first)
    assert case.queue_state == "leased" and case.lease_owner_id == b.id
    assert case.status == "in_review" and case.claimed_at is not None


def test_disagreement_escalates_then_caps_with_plurality(db, task, people, queued):
    update_task(db(), _task(db, task["name"]), {"review": {"reviewers_per_case": 2}}, SYSTEM)
    db.commit()
    (case_id,) = queued(1)
    votes = ["good", "bad", "bad"]
    actors = [people() for _ in votes]
    for actor, label in zip(actors, votes, strict=True):
        claimed = review.claim(db(), task["name"], actor)
        assert claimed is not None and claimed.case.id == case_id
        decision = review.submit_review(db(), case_id, label, actor)
        db.commit()
    assert decision.resolved and db.get(Case, case_id).final_label == "bad"

    # Cap: k=2 plus MAX_EXTRA_REVIEWERS=2 -> at most 4 reviewers, plurality wins.
    update_task(db(), _task(db, task["name"]), {"add_labels": ["unsure", "fraud"]}, SYSTEM)
    db.commit()
    (capped,) = queued(1)
    labels = ["good", "bad", "unsure", "fraud"]
    for i, label in enumerate(labels):
        actor = people()
        review.claim(db(), task["name"], actor)
        decision = review.submit_review(db(), capped, label, actor)
        db.commit()
        assert decision.resolved == (i == len(labels) - 1)
    case = db.get(Case, capped)
    assert case.final_label == "good"  # tie broken by the label chosen first
    last = db.scalar(
        select(AuditEvent).where(AuditEvent.case_id == capped, AuditEvent.action == "case.resolved")
    )
    assert last.details["agreement"] is False and last.details["decided_by"] == "plurality"
    stats = review.agreement_stats(db(), _task(db, task["name"]))
    assert stats["cases"] == 2 and stats["case_agreement_rate"] == 0.0


def test_tokens_and_wrong_roles_cannot_review(db, task, people, queued):
    queued(1)
    token_actor = SYSTEM.__class__(kind="token", id=1, name="t", role="reviewer")
    with pytest.raises(Forbidden):
        review.claim(db(), task["name"], token_actor)
    with pytest.raises(Forbidden):
        review.claim(db(), task["name"], people("analyst"))
    with pytest.raises(Forbidden):
        review.claim(db(), task["name"], people("reviewer", scope=["other-task"]))


def test_queue_filters(db, task, people, queued):
    ids = queued(5)
    _answer_automatically(db, ids[0])
    _set(db, ids[1], created_at=utcnow() - timedelta(hours=5))
    forced = queued(1, force_review=True)[0]
    review.claim(db(), task["name"], people())  # the oldest: ids[1]
    db.commit()
    actor = people("analyst")  # reviewers get the blind listing, without these filters
    page = review.queue_page(db(), task["name"], actor, review.QueueFilter())
    assert page["total"] == 6 and page["items"][0]["case_id"] == ids[1]
    leased = review.queue_page(db(), task["name"], actor, review.QueueFilter(state="leased"))
    assert [i["case_id"] for i in leased["items"]] == [ids[1]]
    assert leased["items"][0]["lease_owner"] is not None
    audited = review.queue_page(db(), task["name"], actor, review.QueueFilter(audit=True))
    assert [i["case_id"] for i in audited["items"]] == [ids[0]]
    by_reason = review.queue_page(db(), task["name"], actor, review.QueueFilter(reason="forced"))
    assert [i["case_id"] for i in by_reason["items"]] == [forced]
    old = review.queue_page(db(), task["name"], actor, review.QueueFilter(min_age_seconds=3600))
    assert [i["case_id"] for i in old["items"]] == [ids[1]]
    paged = review.queue_page(db(), task["name"], actor, review.QueueFilter(page=2, per_page=4))
    assert len(paged["items"]) == 2 and paged["pages"] == 2
