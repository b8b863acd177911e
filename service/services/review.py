"""The review workflow (docs/review.md): claim, decide, release, undo, and the queue.

Exactly-once rules, enforced here for every surface (API, UI, benchmarks):

* A case is leased to one reviewer at a time. On PostgreSQL the claim takes the row with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` so concurrent reviewers never wait on, nor receive,
  the same case; on SQLite ``BEGIN IMMEDIATE`` (service.db) serialises writers instead.
* A decision is accepted only from the reviewer holding a live lease, with the case row
  locked; anything else is a 409. Reviews are append-only: undo marks ``retracted_at``.
* With ``reviewers_per_case`` = k > 1 a case resolves once k reviewers chose the same label.
  Each disagreement asks one more reviewer, at most :data:`MAX_EXTRA_REVIEWERS` more; when
  that cap is reached the plurality label wins (ties: the label chosen first) and the
  resolution is recorded as ``agreement: false`` so it shows on the dashboard.

Reviews are blind (docs/review.md, "Blind review"): what a reviewer's client receives
(:func:`claimed_view`, :func:`decision_view`, the queue listing for reviewers) is the same
for audited and other cases, without the model's suggestion or another reviewer's verdict.

Claim order: the oldest waiting case (so the cases past the task's SLA, the oldest, come
first). Audits get no place of their own in the order: a case that jumped the queue would
tell its reviewer it is an audit. The claim is one query on ``ix_cases_queue`` that stops at
its first row, whatever the size of the queue (bench/README.md, "Review claim").
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    select,
)
from sqlalchemy.orm import Session, lazyload, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from service.db import is_postgres, utcnow
from service.errors import Conflict, Forbidden, NotFound, Unauthorized, ValidationFailed
from service.models import AuditEvent, Case, Review, Task, User
from service.policy import Policy
from service.services import audit
from service.services.audit import Actor
from service.services.cases import (
    FULL_VIEW_ROLES,
    after_human_label,
    blind_view,
    get_case,
    get_case_and_task,
)
from service.services.tasks import check_task, get_task

#: Extra reviewers asked after disagreements, beyond ``reviewers_per_case``.
MAX_EXTRA_REVIEWERS = 2
#: Cases a claimer may ask to skip (the UI sends the ones skipped in this sitting).
MAX_EXCLUDE = 200
#: Expired leases returned to the queue per claim (the periodic job sweeps the rest).
EXPIRE_BATCH = 50
QUEUE_STATES = ("waiting", "leased")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _review_settings(task: Task) -> tuple[int, int, int]:
    review = task.review or {}
    return (
        int(review.get("lease_seconds", 300)),
        int(review.get("reviewers_per_case", 1)),
        int(review.get("sla_seconds", 86_400)),
    )


def require_person(actor: Actor) -> int:
    """Reviews are decisions of people: only a signed-in user, or a token bound to a user's
    account, can hold a lease. Checked before a request body is even read."""
    if actor.kind != "user" or actor.id is None:
        raise Forbidden(
            "reviews are made by people and this token acts for no one. A token bound to a "
            "reviewer's account can claim and decide cases: create one with `tandem token "
            'create --role reviewer --user EMAIL` (docs/review.md, "Reviewing through the '
            'API"), or sign in to the review UI',
            {"actor": actor.kind},
        )
    if actor.role not in REVIEWING_ROLES:
        raise Forbidden(f"role {actor.role!r} may not review", {"required_roles": ["reviewer"]})
    return actor.id


#: The roles that may hold a lease and decide cases.
REVIEWING_ROLES = frozenset({"reviewer", "admin"})


def hold_person(session: Session, user_id: int) -> PersonAccess:
    """Take the reviewer's own row for the rest of this unit of work, before their leases
    are read or changed (locked on PostgreSQL; SQLite's writers take turns already), and
    return the access it holds now.

    Two promises rest on it. A reviewer holds at most one lease per task: without it, claims
    sent at the same moment by one person each saw no lease held and each took a case.
    Deactivation and a narrower access give the cases back: they update this row first
    (``accounts.deactivate_user``, ``accounts.change_access``), so they wait for a claim in
    flight to commit and then see its lease, and a claim arriving after them finds the
    person inactive here, or (:func:`check_still_reviews`) without the task or the role.
    ``FOR NO KEY UPDATE`` leaves the foreign-key checks of other writes alone."""
    stmt = _PERSON_FOR_LEASES if is_postgres(session) else _PERSON_NOW
    row = session.execute(stmt, {"user_id": user_id}).first()
    if row is None:
        raise Unauthorized("this account was deactivated", {"reason": "deactivated"})
    return PersonAccess(role=row.role, task_scope=row.task_scope)


@dataclass(frozen=True)
class PersonAccess:
    """A reviewer's role and task scope as their account row says now."""

    role: str
    task_scope: list[str] | None


def check_still_reviews(access: PersonAccess, task_name: str) -> None:
    """Refuse a lease the person's account no longer allows. The request was authenticated
    a moment before :func:`hold_person` took the row: an admin's change committed in between
    (the change gave back what the person held) must not be undone by a lease taken on the
    rights the person had before."""
    if access.role not in REVIEWING_ROLES or (
        access.task_scope is not None and task_name not in access.task_scope
    ):
        raise Forbidden(
            "your role or tasks changed while this request was on its way; reload to see "
            "what you may review now",
            {"reason": "access_changed"},
        )


_PERSON_NOW = select(User.role, User.task_scope).where(
    User.id == bindparam("user_id"), User.active.is_(True)
)
_PERSON_FOR_LEASES = _PERSON_NOW.with_for_update(key_share=True)


def active_reviews(case: Case) -> list[Review]:
    return [r for r in case.reviews if r.retracted_at is None]


def second_review_draw(case_id: str) -> float:
    """Deterministic uniform draw in [0, 1) for the second blind review of an audit.

    SHA-256 of the case id under its own prefix: independent of the audit draw
    (:func:`service.policy.audit_draw`, the plain id), so doubly reviewed audits are a
    uniform sample of the audits, and the same case always gets the same answer.
    """
    digest = hashlib.sha256(b"second-review:" + case_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def needs_second_review(case: Case, task: Task) -> bool:
    """An audited case drawn (at the task's ``second_review_rate``) for a second reviewer."""
    if not case.audit:
        return False
    return second_review_draw(case.id) < Policy.from_dict(task.policy).second_review_rate


# ---------------------------------------------------------------------------- claim


def _candidates(task_id: int | BindParameter[Any], exclude: list[str]) -> Select[Any]:
    stmt = select(Case).where(Case.task_id == task_id, Case.queue_state == "waiting")
    if exclude:
        stmt = stmt.where(Case.id.not_in(exclude))
    return stmt


def _lock_first(session: Session, stmt: Select[Any]) -> Case | None:
    # Ordered exactly as ``ix_cases_queue`` (task, queue state, arrival): the scan stops at
    # the first row, whatever the table's statistics say. A tie-break on the id (not in that
    # index) made PostgreSQL walk ``ix_cases_task_created_id`` past every answered case older
    # than the head of the queue instead, or sort the whole queue (bench/README.md). Cases that
    # arrived at the same instant (one batch) are served in no guaranteed order among themselves.
    # Its reviews are not read here: this statement's snapshot predates the lock, so it could
    # miss a review committed while it waited (the lease below reads them under the lock).
    stmt = _first_in_queue(stmt)
    if is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    return session.scalars(stmt).first()


def _first_in_queue(stmt: Select[Any]) -> Select[Any]:
    return stmt.order_by(Case.created_at).limit(1).options(lazyload(Case.reviews))


def _lock_head(session: Session, task_id: int, exclude: list[str]) -> Case | None:
    """:func:`_lock_first` of every waiting case: the usual claim's, built once."""
    if exclude:
        return _lock_first(session, _candidates(task_id, exclude))
    stmt = _HEAD_FOR_UPDATE if is_postgres(session) else _HEAD
    return session.scalars(stmt, {"task_id": task_id}).first()


_HEAD = _first_in_queue(_candidates(bindparam("task_id"), []))
_HEAD_FOR_UPDATE = _HEAD.with_for_update(skip_locked=True)


def _next_case(
    session: Session,
    task_id: int,
    user_id: int,
    exclude: list[str],
    expires: datetime,
    now: datetime,
) -> Case | None:
    """The oldest waiting case this person has not reviewed yet, locked and leased to them.

    The head of the queue first, on the queue index alone, leased unless they already
    reviewed it (one statement: :func:`_lease_unless_reviewed`); only when they did (a
    second opinion is waiting for someone else, or they undid and released it) the query
    that leaves out everything they reviewed. Its anti-join is planned from the reviews'
    statistics, and a stale estimate once made it sort the whole queue (52 s)."""
    case = _lock_head(session, task_id, exclude)
    if case is None or _lease_unless_reviewed(session, case, user_id, expires, now):
        return case
    already_reviewed = exists().where(
        Review.case_id == Case.id, Review.reviewer_id == user_id, Review.retracted_at.is_(None)
    )
    case = _lock_first(session, _candidates(task_id, exclude).where(~already_reviewed))
    if case is not None:
        _lease(case, user_id, expires, now)
    return case


def _lease_unless_reviewed(
    session: Session, case: Case, user_id: int, expires: datetime, now: datetime
) -> bool:
    """Lease ``case`` (locked by the caller) to the reviewer unless they already reviewed it
    (a retracted review does not count); whether it did.

    One round trip where a read of the case's reviews and the lease took two: the UPDATE's
    condition checks the reviews and its RETURNING tells whether the case has any. Both run
    after the row lock was granted, so they see every review committed before it (reviews
    are written only under that lock). A case nobody reviewed gets its (empty) reviews
    without a query; the others load theirs when first read."""
    values: dict[str, Any] = {
        "queue_state": "leased",
        "lease_owner_id": user_id,
        "lease_expires_at": expires,
        "claimed_at": now,
        "status": "in_review" if case.status == "pending" else case.status,
        "updated_at": now,
    }
    # A table statement, not an ORM one: the ORM neither flushes nor tries to synchronise
    # the session; the loaded case is brought up to date below. The SET clause is the
    # parameters' keys (the statement names no values of its own).
    row = session.execute(
        _LEASE_UNLESS_REVIEWED, {**values, "lease_case_id": case.id, "lease_user_id": user_id}
    ).first()
    if row is None:
        return False
    for key, value in values.items():
        set_committed_value(case, key, value)
    if not row[0]:
        set_committed_value(case, "reviews", [])
    return True


def _build_lease_unless_reviewed() -> Any:
    table: Table = Case.__table__  # type: ignore[assignment]
    case_id: BindParameter[str] = bindparam("lease_case_id")
    mine = exists().where(
        Review.case_id == case_id,
        Review.reviewer_id == bindparam("lease_user_id"),
        Review.retracted_at.is_(None),
    )
    anyone = exists().where(Review.case_id == case_id)
    return (
        table.update()
        .where(table.c.id == case_id, ~mine)
        .returning(select(anyone).scalar_subquery())
    )


_LEASE_UNLESS_REVIEWED = _build_lease_unless_reviewed()


def expire_task_leases(session: Session, task_id: int, now: datetime) -> int:
    """Return this task's expired leases to the queue (claim does this lazily, so a lapsed
    lease is claimable at once, not only after the periodic sweep)."""
    stmt = (
        select(Case)
        .where(
            Case.task_id == task_id,
            Case.queue_state == "leased",
            Case.lease_expires_at < now,
        )
        .limit(EXPIRE_BATCH)
    )
    if is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    expired = session.scalars(stmt).all()
    for case in expired:
        owner = case.lease_owner_id
        _give_back(
            session,
            case,
            audit.SYSTEM,
            "case.lease_expired",
            details={"reviewer_id": owner},
        )
    return len(expired)


def expire_leases(session: Session) -> int:
    """Return every task's expired leases to the queue (the periodic sweep, for leases no
    claim has come to expire); how many."""
    now = utcnow()
    task_ids = session.scalars(
        select(Case.task_id)
        .where(Case.queue_state == "leased", Case.lease_expires_at < now)
        .distinct()
    ).all()
    total = 0
    for task_id in task_ids:
        while True:
            expired = expire_task_leases(session, task_id, now)
            total += expired
            if expired < EXPIRE_BATCH:
                break
    return total


def _lease(case: Case, user_id: int, expires: datetime, now: datetime) -> None:
    case.queue_state = "leased"
    case.lease_owner_id = user_id
    case.lease_expires_at = expires
    case.claimed_at = now
    if case.status == "pending":
        case.status = "in_review"


def _give_back(
    session: Session,
    case: Case,
    actor: Actor,
    action: str,
    *,
    details: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> None:
    """The case goes back to the queue, and why is on record (released, lease expired)."""
    _unlease(case)
    audit.record(
        session,
        action,
        actor,
        task_id=case.task_id,
        case_id=case.id,
        details=details,
        request_id=request_id,
    )


def _unlease(case: Case) -> None:
    case.queue_state = "waiting"
    case.lease_owner_id = None
    case.lease_expires_at = None
    case.claimed_at = None
    if case.status == "in_review":
        case.status = "pending"


def _give_back_others(
    session: Session,
    task_id: int,
    case_id: str,
    actor: Actor,
    user_id: int,
    *,
    request_id: str | None,
) -> None:
    """Before a reviewer takes ``case_id``: every other case of the task they hold goes back
    to the queue (one lease per task), each with its ``case.released`` event."""
    held = session.scalars(
        select(Case).where(
            Case.task_id == task_id,
            Case.queue_state == "leased",
            Case.lease_owner_id == user_id,
            Case.id != case_id,
        )
    ).all()
    for other in held:
        _give_back(
            session,
            other,
            actor,
            "case.released",
            details={"implicit": True},
            request_id=request_id,
        )


def _task_and_leases(
    session: Session, task_name: str, actor: Actor, user_id: int, now: datetime
) -> tuple[Task, str | None, bool]:
    """The task, with what a claim must know of its leases first: the case this person
    holds (if any) and whether any lease lapsed (usually neither). One round trip: the
    leases are correlated subqueries of the task's row, each on ``ix_cases_queue``."""
    row = session.execute(
        _TASK_AND_LEASES, {"task_name": task_name, "user_id": user_id, "now": now}
    ).first()
    task = check_task(row[0] if row is not None else None, task_name, actor)
    assert row is not None
    return task, row[1], bool(row[2])


def _build_task_and_leases() -> Select[Any]:
    leased = and_(Case.task_id == Task.id, Case.queue_state == "leased")
    held = (
        select(Case.id)
        .where(leased, Case.lease_owner_id == bindparam("user_id"))
        .order_by(Case.claimed_at)
        .limit(1)
        .scalar_subquery()
    )
    lapsed = exists().where(leased, Case.lease_expires_at < bindparam("now"))
    return (
        select(Task, held, lapsed)
        .where(Task.name == bindparam("task_name"))
        .options(lazyload(Task.active_model))
    )


# The claim's statements are built once (building them on every claim was more than half
# of their CPU: bench/README.md, "Claim and decide on fewer CPU cycles").
_TASK_AND_LEASES = _build_task_and_leases()


@dataclass
class Claimed:
    case: Case
    task: Task
    renewed: bool  # the reviewer already held this lease (page reload, second tab)


def claim(
    session: Session,
    task_name: str,
    actor: Actor,
    *,
    exclude: list[str] | None = None,
    request_id: str | None = None,
) -> Claimed | None:
    """Lease the next case of the task to the reviewer, or None when nothing is waiting.

    A reviewer holds at most one lease per task: claiming again returns (and renews) the
    case they already hold, so a reload or a second tab never strands a case.
    """
    user_id = require_person(actor)
    access = hold_person(session, user_id)
    now = utcnow()
    task, held_id, lapsed = _task_and_leases(session, task_name, actor, user_id, now)
    check_still_reviews(access, task.name)
    lease_seconds, _, sla_seconds = _review_settings(task)
    exclude = list(dict.fromkeys(exclude or []))[:MAX_EXCLUDE]
    expires = now + timedelta(seconds=lease_seconds)

    held = session.get(Case, held_id) if held_id is not None else None
    if held is not None and held.id not in exclude:
        held.lease_expires_at = expires
        return Claimed(case=held, task=task, renewed=True)
    if held is not None:
        # The reviewer moved on from the case they held: give it back first.
        _give_back(
            session,
            held,
            actor,
            "case.released",
            details={"implicit": True},
            request_id=request_id,
        )

    if lapsed:
        expire_task_leases(session, task.id, now)

    cutoff = now - timedelta(seconds=sla_seconds)
    # Oldest first: the cases past the SLA are the oldest, so they come first without a
    # query of their own. No tier for audits: an audit served ahead of older cases would
    # stand out (received minutes ago while the queue holds day-old cases), and the review
    # must stay blind.
    case = _next_case(session, task.id, user_id, exclude, expires, now)
    if case is None:
        return None
    details = {"lease_expires_at": _iso(expires), "sla_breached": case.created_at < cutoff}
    audit.write_now(
        session,
        actor,
        [("case.claimed", details)],
        task_id=task.id,
        case_id=case.id,
        request_id=request_id,
    )
    return Claimed(case=case, task=task, renewed=False)


def reviewable_by(case: Case, user_id: int, now: datetime | None = None) -> bool:
    """Whether :func:`claim_case` would give this case to this person now: it waits in the
    queue (or its lease lapsed, or they hold it) and they have not reviewed it yet."""
    now = now or utcnow()
    if case.queue_state is None:
        return False
    if any(r.reviewer_id == user_id for r in active_reviews(case)):
        return False
    if case.queue_state == "waiting" or case.lease_owner_id == user_id:
        return True
    return case.lease_expires_at is not None and case.lease_expires_at < now


def claim_case(
    session: Session, case_id: str, actor: Actor, *, request_id: str | None = None
) -> Claimed:
    """Lease one chosen case to the reviewer (the case page's "Review this case"), with the
    rules of :func:`claim`: one lease per reviewer and task (the one they held is given back
    first), the task's lease length, the same ``case.claimed`` audit event (``chosen`` says
    the reviewer picked it). A case that is resolved, leased by someone else, or already
    reviewed by this person is refused with a conflict and nothing changes."""
    user_id = require_person(actor)
    access = hold_person(session, user_id)
    case, task = get_case_and_task(session, case_id, actor, for_update=True)
    check_still_reviews(access, task.name)
    lease_seconds, _, sla_seconds = _review_settings(task)
    now = utcnow()
    expires = now + timedelta(seconds=lease_seconds)
    if _holds_live_lease(case, user_id, now):
        case.lease_expires_at = expires
        return Claimed(case=case, task=task, renewed=True)
    if not reviewable_by(case, user_id, now):
        if case.queue_state is not None and any(
            r.reviewer_id == user_id for r in active_reviews(case)
        ):
            raise Conflict(
                "you already reviewed this case", {"case_id": case.id, "reason": "already_reviewed"}
            )
        if case.queue_state == "leased":
            raise Conflict(
                "someone else is reviewing this case", {"case_id": case.id, "reason": "leased"}
            )
        raise _conflict_for(case, user_id)
    if case.queue_state == "leased":  # a lapsed lease of someone else's
        owner = case.lease_owner_id
        _give_back(
            session,
            case,
            audit.SYSTEM,
            "case.lease_expired",
            details={"reviewer_id": owner},
        )
    _give_back_others(session, task.id, case.id, actor, user_id, request_id=request_id)
    _lease(case, user_id, expires, now)
    audit.record(
        session,
        "case.claimed",
        actor,
        task_id=task.id,
        case_id=case.id,
        details={
            "lease_expires_at": _iso(expires),
            "sla_breached": case.created_at < now - timedelta(seconds=sla_seconds),
            "chosen": True,
        },
        request_id=request_id,
    )
    return Claimed(case=case, task=task, renewed=False)


def claimed_view(session: Session, claimed: Claimed, user_id: int | None) -> dict[str, Any]:
    """What a reviewer gets to decide a case: the blind view (``cases.blind_view``), the
    same for every case, audited or not."""
    return blind_view(session, claimed.case, claimed.task, user_id)


def decision_view(decision: Decision, task: Task) -> dict[str, Any]:
    """The answer to a reviewer's decision: it is recorded, and until when it can be undone.

    Nothing about the case's resolution: whether it needed another reviewer, the label it
    settled on or what the model had said would tell an audit, or another reviewer's
    verdict, to someone who may still undo and decide again."""
    lease_seconds, _, _ = _review_settings(task)
    review = decision.review
    return {
        "case_id": decision.case.id,
        "review_id": str(review.id),
        "label": review.label,
        "decided_at": _iso(review.decided_at),
        "undo_until": _iso(review.decided_at + timedelta(seconds=lease_seconds)),
    }


# --------------------------------------------------------------------------- decide


def _holds_live_lease(case: Case, user_id: int, now: datetime) -> bool:
    return (
        case.queue_state == "leased"
        and case.lease_owner_id == user_id
        and case.lease_expires_at is not None
        and case.lease_expires_at > now
    )


def _conflict_for(case: Case, user_id: int) -> Conflict:
    if case.queue_state is None:
        return Conflict(
            "this case is already resolved", {"case_id": case.id, "reason": "already_resolved"}
        )
    if case.queue_state == "leased" and case.lease_owner_id == user_id:
        return Conflict(
            "your lease on this case expired; claim it again",
            {"case_id": case.id, "reason": "lease_expired"},
        )
    return Conflict(
        "you do not hold the lease on this case (it expired or was released)",
        {"case_id": case.id, "reason": "lease_lost"},
    )


@dataclass
class Decision:
    case: Case
    task: Task  # kept here: the session holds unchanged rows weakly, a reload is a round trip
    review: Review
    resolved: bool
    event: str | None  # case.resolved | case.corrected | None (more reviewers needed)


@dataclass
class ToDecide:
    """A case locked for a decision, with its task (:func:`case_to_decide`)."""

    case: Case
    task: Task


def _votes(reviews: list[Review]) -> tuple[str, int, Counter[str]]:
    """Plurality label (ties: the label chosen first), its votes, and all votes."""
    counts: Counter[str] = Counter(r.label for r in reviews)
    first_seen = {label: i for i, label in reversed(list(enumerate(r.label for r in reviews)))}
    top = max(counts, key=lambda label: (counts[label], -first_seen[label]))
    return top, counts[top], counts


def _outcome(case: Case, reviews: list[Review]) -> tuple[str | None, dict[str, Any]]:
    """The label the case resolves with now, or None when it needs one more reviewer."""
    k = max(1, case.reviews_required)
    top, n_top, counts = _votes(reviews)
    info: dict[str, Any] = {"votes": dict(counts), "reviewers": len(reviews), "required": k}
    if n_top >= k:
        info["agreement"] = True
        return top, info
    if len(reviews) >= k + MAX_EXTRA_REVIEWERS:
        info["agreement"] = False
        info["decided_by"] = "plurality"
        return top, info
    return None, info


_RESOLUTIONS = ("case.resolved", "case.corrected")


def _decided_before(session: Session, case: Case, actions: tuple[str, ...]) -> bool:
    """Whether a since undone decision of this case left one of these audit events:
    ``case.resolved``/``case.corrected`` (it resolved the case: the label consequences,
    retrain counter and live watch, are not counted twice), or ``case.corrected`` alone (it
    corrected an automatic answer, and its webhook told the application so)."""
    if not any(r.retracted_at is not None for r in case.reviews):
        return False
    return (
        session.scalar(
            select(AuditEvent.id)
            .where(AuditEvent.case_id == case.id, AuditEvent.action.in_(actions))
            .limit(1)
        )
        is not None
    )


def submit_review(
    session: Session,
    case_id: str,
    label: str,
    actor: Actor,
    *,
    comment: str | None = None,
    request_id: str | None = None,
) -> Decision:
    """Record one reviewer's decision; resolve the case when the decision completes it."""
    return decide(
        session,
        case_to_decide(session, case_id, actor),
        label,
        actor,
        comment=comment,
        request_id=request_id,
    )


def case_to_decide(session: Session, case_id: str, actor: Actor) -> ToDecide:
    """The case, locked, and its task, once the actor may decide on it (the API finds the
    case before it reads the body: 404 and 403 come before 422). Its reviews are read after
    the lock is held, so a decision or an undo committed meanwhile is seen."""
    require_person(actor)
    case, task = get_case_and_task(session, case_id, actor, for_update=True)
    return ToDecide(case=case, task=task)


def decide(
    session: Session,
    target: ToDecide,
    label: str,
    actor: Actor,
    *,
    comment: str | None = None,
    request_id: str | None = None,
) -> Decision:
    """:func:`submit_review` on a case already locked by :func:`case_to_decide`."""
    user_id = require_person(actor)
    case, task = target.case, target.task
    if label not in task.labels:
        raise ValidationFailed(
            f"unknown label {label!r}", {"label": [f"one of: {', '.join(task.labels)}"]}
        )
    now = utcnow()
    if not _holds_live_lease(case, user_id, now):
        raise _conflict_for(case, user_id)
    claimed_at = case.claimed_at
    review = _write_review(
        session,
        case,
        {
            "case_id": case.id,
            "task_id": task.id,
            "reviewer_id": user_id,
            "label": label,
            "comment": comment or None,
            "suggested_label": case.suggestion_label,
            "agreed_with_model": (
                (label == case.suggestion_label) if case.suggestion_label else None
            ),
            "claimed_at": claimed_at,
            "decided_at": now,
            "duration_ms": (int((now - claimed_at).total_seconds() * 1000) if claimed_at else None),
        },
    )
    # The case's new state: applied to the loaded case as each rule decides it (later rules
    # read it), written by one UPDATE before anything else reads the row.
    changes: dict[str, Any] = {}

    def change(**values: Any) -> None:
        for key, value in values.items():
            set_committed_value(case, key, value)
        changes.update(values)

    second_review = False
    if len(active_reviews(case)) == 1 and case.reviews_required < 2:
        # Decided at the first verdict, under the rate in force then, and kept on the case:
        # a later change of the rate never strands a case halfway through.
        second_review = needs_second_review(case, task)
        if second_review:
            change(reviews_required=2)
    final, info = _outcome(case, active_reviews(case))
    if second_review:
        info["second_review"] = True
    change(lease_owner_id=None, lease_expires_at=None, claimed_at=None, updated_at=now)
    events = [("case.reviewed", {"review_id": review.id, "label": label, **info})]
    if final is None:
        change(queue_state="waiting")
        if case.status == "in_review":
            change(status="pending")
        _write_decision(session, case, changes, actor, task.id, events, request_id)
        return Decision(case=case, task=task, review=review, resolved=False, event=None)

    first_label = case.human_label is None
    count_label = first_label and not _decided_before(session, case, _RESOLUTIONS)
    if first_label:
        change(human_label=final, human_labelled_at=now)
    change(queue_state=None)
    event: str | None
    details: dict[str, Any] = {"label": final, "review_id": review.id, **info}
    resolution = {
        "final_label": final,
        "label_source": "reviewer",
        "resolved_by_user_id": user_id,
        "resolved_at": now,
    }
    if case.outcome_label is not None and case.outcome_at is not None:
        # The application reported its outcome before this verdict (an audited case keeps
        # waiting for its audit then): the application already has its answer and the
        # final label stays; the verdict is the case's human label (the audit ledger's).
        details["outcome_label"] = case.outcome_label
        details["agrees_with_outcome"] = final == case.outcome_label
        details["final_label_kept"] = case.final_label
        event = None
    elif case.status == "auto":
        # An audited automatic answer: the human either confirms or overrules the model.
        if final != case.final_label:
            details["model_label"] = case.final_label
            change(status="corrected", **resolution)
            event = "case.corrected"
        else:
            details["audit_confirmed"] = True
            event = None
    else:
        change(status="resolved", **resolution)
        event = "case.resolved"
    if event is None and _decided_before(session, case, ("case.corrected",)):
        # The application was told of a correction since undone, and this verdict changes
        # nothing it sees (it confirms the model, or the application's own outcome stands):
        # the latest event must carry the label the case holds (docs/review.md, "Undo").
        details["correction_undone"] = True
        event = "case.resolved"
    events.append((event or "case.resolved", details))
    _write_decision(session, case, changes, actor, task.id, events, request_id)
    after_human_label(session, task, case, event, new_label=count_label, request_id=request_id)
    return Decision(
        case=case, task=task, review=review, resolved=True, event=event or "case.resolved"
    )


def _write_review(session: Session, case: Case, values: dict[str, Any]) -> Review:
    """The review row, written at once by one statement that returns its id (its audit
    event names it), and added to the case's loaded reviews as a stored row.

    The decision's rows are written as table statements, not by the unit of work's flush:
    the flush cost ~2x the CPU for the same statements (bench/README.md, "Decisions
    without the unit of work"). The session still holds the rows as stored, so
    everything after (the outcome, webhooks, the answer) reads them as before."""
    review_id = session.execute(_INSERT_REVIEW, values).scalar_one()
    review = Review(id=review_id, retracted_at=None, **values)
    make_transient_to_detached(review)  # a stored row the session did not load: no INSERT
    session.add(review)
    set_committed_value(case, "reviews", [*case.reviews, review])
    return review


def _write_decision(
    session: Session,
    case: Case,
    changes: dict[str, Any],
    actor: Actor,
    task_id: int,
    events: list[tuple[str, dict[str, Any]]],
    request_id: str | None,
) -> None:
    """The case's new state (already applied to the loaded case) and the decision's audit
    events, in the order the events happened."""
    session.execute(_UPDATE_CASE, {**changes, "decided_case_id": case.id})
    audit.write_now(session, actor, events, task_id=task_id, case_id=case.id, request_id=request_id)


_REVIEWS: Table = Review.__table__  # type: ignore[assignment]
_CASES: Table = Case.__table__  # type: ignore[assignment]
_INSERT_REVIEW = insert(_REVIEWS).returning(_REVIEWS.c.id)
# The SET clause is the parameters' keys (the statement names no values of its own).
_UPDATE_CASE = _CASES.update().where(_CASES.c.id == bindparam("decided_case_id"))


# ------------------------------------------------------------------ release and undo


def release(session: Session, case_id: str, actor: Actor, *, request_id: str | None = None) -> Case:
    """Give a leased case back to the queue (skip). Only its lease holder may."""
    user_id = require_person(actor)
    case = get_case(session, case_id, actor, for_update=True)
    if case.queue_state != "leased" or case.lease_owner_id != user_id:
        raise _conflict_for(case, user_id)
    _give_back(session, case, actor, "case.released", request_id=request_id)
    return case


def undo(session: Session, case_id: str, actor: Actor, *, request_id: str | None = None) -> Case:
    """Retract the reviewer's last decision on a case while it is still theirs to change.

    Allowed within ``lease_seconds`` of the decision, when no one decided or claimed the
    case since and the application has not reported its outcome since. The review row stays (marked
    retracted); the case goes back to the reviewer, leased, as it was before the decision.
    """
    user_id = require_person(actor)
    access = hold_person(session, user_id)
    case, task = get_case_and_task(session, case_id, actor, for_update=True)
    check_still_reviews(access, task.name)
    lease_seconds, _, _ = _review_settings(task)
    now = utcnow()
    active = active_reviews(case)
    last = active[-1] if active else None
    if last is None or last.reviewer_id != user_id:
        raise Conflict(
            "there is no decision of yours on this case to undo",
            {"case_id": case.id, "reason": "nothing_to_undo"},
        )
    if now - last.decided_at > timedelta(seconds=lease_seconds):
        raise Conflict(
            "too late to undo: the undo window has passed",
            {"case_id": case.id, "reason": "undo_window_passed"},
        )
    if case.queue_state == "leased" and case.lease_owner_id != user_id:
        raise Conflict(
            "another reviewer is working on this case",
            {"case_id": case.id, "reason": "leased_by_other"},
        )
    if case.outcome_at is not None and case.outcome_at >= last.decided_at:
        raise Conflict(
            "the application reported this case's outcome since; it cannot be undone",
            {"case_id": case.id, "reason": "resolved_by_application"},
        )
    # The case comes back leased to them: a case of the task they held meanwhile goes back
    # to the queue (one lease per task, as when they claim).
    _give_back_others(session, task.id, case.id, actor, user_id, request_id=request_id)
    was_resolution = case.queue_state is None
    last.retracted_at = now
    details: dict[str, Any] = {"review_id": last.id, "label": last.label}
    if was_resolution:
        details["status_before"] = case.status
        details["final_label_before"] = case.final_label
        case.human_label = None
        case.human_labelled_at = None
        # A verdict that settled no final label (it confirmed an automatic answer, or came
        # after the application's outcome) takes only the human label with it.
        if case.label_source == "reviewer" and case.status == "resolved":
            case.status = "in_review"
            case.final_label = None
            case.label_source = None
            case.resolved_by_user_id = None
            case.resolved_at = None
        elif case.label_source == "reviewer" and case.status == "corrected":
            # Back to the model's automatic answer, awaiting this reviewer's audit verdict.
            case.status = "auto"
            case.final_label = case.suggestion_label
            case.label_source = "model"
            case.resolved_by_user_id = None
            case.resolved_at = case.created_at
    elif case.status == "pending":
        case.status = "in_review"
    case.queue_state = "leased"
    case.lease_owner_id = user_id
    case.claimed_at = now
    case.lease_expires_at = now + timedelta(seconds=lease_seconds)
    audit.record(
        session,
        "case.review_undone",
        actor,
        task_id=task.id,
        case_id=case.id,
        details=details,
        request_id=request_id,
    )
    return case


#: Cases an admin may release at once from the queue page.
MAX_BULK = 500


def release_cases(
    session: Session,
    task_name: str,
    case_ids: list[str],
    actor: Actor,
    *,
    request_id: str | None = None,
) -> list[str]:
    """An admin gives leased cases of a task back to the queue, whoever holds them (a
    reviewer who left for the day). Each release is its own ``case.released`` audit event
    naming the reviewer whose lease ended. Every id must be a case of the task currently
    leased; otherwise nothing changes. Returns the released ids."""
    if actor.role != "admin":
        raise Forbidden("only admins release other people's cases")
    task = get_task(session, task_name, actor)
    ids = list(dict.fromkeys(case_ids))
    if not ids:
        raise ValidationFailed("choose at least one case", {"case_ids": ["Choose a case."]})
    if len(ids) > MAX_BULK:
        raise ValidationFailed(
            f"at most {MAX_BULK} cases at once", {"case_ids": [f"At most {MAX_BULK}."]}
        )
    stmt = select(Case).where(Case.task_id == task.id, Case.id.in_(ids))
    if is_postgres(session):
        stmt = stmt.with_for_update()
    rows = {c.id: c for c in session.scalars(stmt)}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise NotFound(f"no case {missing[0]} in task {task.name}", {"case_ids": missing})
    not_leased = [i for i in ids if rows[i].queue_state != "leased"]
    if not_leased:
        raise Conflict(
            f"{len(not_leased)} of the chosen cases are not being reviewed; nothing was released",
            {"case_ids": not_leased, "reason": "not_leased"},
        )
    for case_id in ids:
        case = rows[case_id]
        owner = case.lease_owner_id
        _give_back(
            session,
            case,
            actor,
            "case.released",
            details={"by_admin": True, "reviewer_id": owner},
            request_id=request_id,
        )
    return ids


#: Why ``release_held_by`` gave a person's cases back (``case.released`` ``why``).
WHY_DEACTIVATED = "user deactivated"
WHY_ACCESS_CHANGED = "access changed"


def release_held_by(
    session: Session,
    user_id: int,
    actor: Actor,
    *,
    why: str,
    keep_tasks: list[str] | None = None,
) -> int:
    """Every case ``user_id`` holds goes back to the queue now, but those of ``keep_tasks``
    (the person was deactivated, or may no longer decide them: their lease would otherwise
    keep the case from everyone until it ran out). One ``case.released`` event per case,
    naming the reviewer and why."""
    stmt = select(Case).where(Case.queue_state == "leased", Case.lease_owner_id == user_id)
    if keep_tasks:
        stmt = stmt.where(Case.task_id.not_in(select(Task.id).where(Task.name.in_(keep_tasks))))
    if is_postgres(session):
        stmt = stmt.with_for_update()
    cases = session.scalars(stmt).all()
    for case in cases:
        _give_back(
            session,
            case,
            actor,
            "case.released",
            details={"reviewer_id": user_id, "why": why},
        )
    return len(cases)


# ---------------------------------------------------------------------------- queue


@dataclass
class QueueFilter:
    state: str | None = None  # waiting | leased
    status: str | None = None  # pending | in_review | auto
    reason: str | None = None
    audit: bool | None = None
    min_age_seconds: int | None = None
    max_age_seconds: int | None = None
    external_id: str | None = None  # exact (the task's external-id index)
    field: str | None = None  # with ``value``: cases whose input field equals it
    value: str | None = None
    page: int = 1
    per_page: int = 50


def queue_page(session: Session, task_name: str, actor: Actor, flt: QueueFilter) -> dict[str, Any]:
    """One page of the review queue, oldest first, with the filters applied.

    Reviewers get the blind listing (docs/review.md, "Blind review"): no status, route
    reason, audit flag, suggestion or reviewer count, and no filter on them (any of these
    would pick out the audits waiting in the queue). Analysts and admins see everything.
    """
    task = get_task(session, task_name, actor)
    blind = actor.role not in FULL_VIEW_ROLES
    if blind:
        chosen = {"status": flt.status, "reason": flt.reason, "audit": flt.audit}
        hidden = [name for name, value in chosen.items() if value is not None]
        if hidden:
            raise Forbidden(
                "reviews are blind: reviewers filter the queue by state and age only",
                {name: ["Not available to reviewers."] for name in hidden},
            )
    _, _, sla_seconds = _review_settings(task)
    now = utcnow()
    states = [flt.state] if flt.state else list(QUEUE_STATES)
    conds = [Case.task_id == task.id, Case.queue_state.in_(states)]
    if flt.status:
        conds.append(Case.status == flt.status)
    if flt.reason:
        conds.append(Case.reason == flt.reason)
    if flt.audit is not None:
        conds.append(Case.audit.is_(flt.audit))
    if flt.min_age_seconds is not None:
        conds.append(Case.created_at <= now - timedelta(seconds=flt.min_age_seconds))
    if flt.max_age_seconds is not None:
        conds.append(Case.created_at >= now - timedelta(seconds=flt.max_age_seconds))
    if flt.external_id:
        conds.append(Case.external_id == flt.external_id)
    if flt.field is not None or flt.value is not None:
        conds.append(_field_condition(task, flt.field, flt.value))
    where = and_(*conds)
    total = session.scalar(select(func.count()).select_from(Case).where(where)) or 0
    rows = session.scalars(
        select(Case)
        .where(where)
        .order_by(Case.created_at, Case.id)
        .offset((flt.page - 1) * flt.per_page)
        .limit(flt.per_page)
    ).all()
    owners = {r.lease_owner_id for r in rows if r.lease_owner_id is not None}
    pseudonyms = (
        dict(session.execute(select(User.id, User.pseudonym).where(User.id.in_(owners))).all())
        if owners
        else {}
    )
    cutoff = now - timedelta(seconds=sla_seconds)
    items = []
    for row in rows:
        item: dict[str, Any] = {
            "case_id": row.id,
            "external_id": row.external_id,
            "queue_state": row.queue_state,
            "created_at": _iso(row.created_at),
            "age_seconds": int((now - row.created_at).total_seconds()),
            "sla_breached": row.created_at < cutoff,
            "lease_owner": pseudonyms.get(row.lease_owner_id) if row.lease_owner_id else None,
            "lease_expires_at": _iso(row.lease_expires_at),
        }
        if not blind:
            item.update(
                {
                    "status": row.status,
                    "reason": row.reason,
                    "audit": bool(row.audit),
                    "suggestion": {
                        "label": row.suggestion_label,
                        "confidence": round(float(row.confidence), 6),
                    }
                    if row.suggestion_label is not None and row.confidence is not None
                    else None,
                    "reviews_required": row.reviews_required,
                }
            )
        items.append(item)
    return {
        "task": task.name,
        "items": items,
        "page": flt.page,
        "per_page": flt.per_page,
        "total": total,
        "pages": max(1, -(-total // flt.per_page)),
    }


def _field_condition(task: Task, field: str | None, value: str | None) -> ColumnElement[bool]:
    """Input ``field`` equal to ``value`` (numbers compared as numbers, booleans as
    true/false, other fields as text); an unknown field or an unreadable value is refused."""
    kinds = {f["name"]: f.get("type", "text") for f in task.fields}
    if not field or value is None or value.strip() == "":
        raise ValidationFailed(
            "search by field needs a field and a value",
            {"field" if not field else "value": ["Give both a field and a value."]},
        )
    if field not in kinds:
        raise ValidationFailed(f"no field {field!r} in task {task.name}", {"field": ["Unknown."]})
    text = value.strip()
    element = Case.input[field]
    if kinds[field] == "number":
        try:
            number = float(text)
        except ValueError:
            raise ValidationFailed(f"{field} is a number", {"value": ["Give a number."]}) from None
        return element.as_float() == number
    if kinds[field] == "boolean":
        if text.lower() not in ("true", "false", "yes", "no"):
            raise ValidationFailed(f"{field} is true or false", {"value": ["true or false."]})
        return element.as_boolean() == (text.lower() in ("true", "yes"))
    return element.as_string() == text


# ------------------------------------------------------------------------ summaries


def queue_summary(session: Session, task: Task) -> dict[str, Any]:
    """Depth and age of a task's queue (task list, dashboard fallback)."""
    row = session.execute(
        select(
            func.count().filter(Case.queue_state == "waiting"),
            func.count().filter(Case.queue_state == "leased"),
            func.min(Case.created_at),
        ).where(Case.task_id == task.id, Case.queue_state.in_(QUEUE_STATES))
    ).one()
    oldest = row[2]
    return {
        "waiting": int(row[0]),
        "leased": int(row[1]),
        "depth": int(row[0]) + int(row[1]),
        "oldest_created_at": _iso(oldest),
        "oldest_pending_seconds": int((utcnow() - oldest).total_seconds()) if oldest else None,
    }


def reviewer_today(session: Session, task: Task, user_id: int) -> int:
    """Decisions the reviewer made on this task since midnight UTC (not counting undone)."""
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    return int(
        session.scalar(
            select(func.count())
            .select_from(Review)
            .where(
                Review.reviewer_id == user_id,
                Review.task_id == task.id,
                Review.decided_at >= midnight,
                Review.retracted_at.is_(None),
            )
        )
        or 0
    )


def reviewer_progress(session: Session, task: Task, user_id: int) -> dict[str, int]:
    """What is left for one reviewer (the review page's counter): cases waiting that they
    have not decided, plus the one they hold. The same count whatever the cases are, so it
    tells nothing of audits (docs/review.md, "Blind review")."""
    already = exists().where(
        Review.case_id == Case.id, Review.reviewer_id == user_id, Review.retracted_at.is_(None)
    )
    mine = and_(Case.queue_state == "leased", Case.lease_owner_id == user_id)
    left = session.scalar(
        select(func.count())
        .select_from(Case)
        .where(Case.task_id == task.id, (Case.queue_state == "waiting") | mine, ~already)
    )
    return {"left": int(left or 0), "today": reviewer_today(session, task, user_id)}


def fields_for_review(task: Task) -> list[dict[str, Any]]:
    """The task's fields in the order the review page shows them: the task's
    ``review.primary_fields`` first (marked ``primary``), then the others in task order."""
    primary = list((task.review or {}).get("primary_fields") or [])
    by_name = {f["name"]: f for f in task.fields}
    first = [dict(by_name[n], primary=True) for n in primary if n in by_name]
    rest = [dict(f) for f in task.fields if f["name"] not in primary]
    return first + rest


def agreement_stats(session: Session, task: Task, since: datetime | None = None) -> dict[str, Any]:
    """Inter-reviewer agreement on cases decided by more than one reviewer.

    ``case_agreement_rate``: share of such cases whose reviewers all chose the same label;
    per reviewer, ``agreement_rate``: share of their decisions that matched the final label.
    """
    conds = [
        Review.task_id == task.id,
        Review.retracted_at.is_(None),
        Case.queue_state.is_(None),
        Case.human_label.is_not(None),
    ]
    if since is not None:
        conds.append(Review.decided_at >= since)
    rows = session.execute(
        select(Review.case_id, Review.reviewer_id, Review.label, Case.human_label)
        .join(Case, Case.id == Review.case_id)
        .where(*conds)
    ).all()
    by_case: dict[str, list[tuple[int, str, str | None]]] = {}
    for case_id, reviewer_id, label, final in rows:
        by_case.setdefault(case_id, []).append((reviewer_id, label, final))
    multi = {cid: revs for cid, revs in by_case.items() if len(revs) > 1}
    agreeing = sum(1 for revs in multi.values() if len({lbl for _, lbl, _ in revs}) == 1)
    per: dict[int, list[int]] = {}
    for revs in multi.values():
        for reviewer_id, label, final in revs:
            per.setdefault(reviewer_id, []).append(int(label == final))
    pseudonyms = (
        dict(session.execute(select(User.id, User.pseudonym).where(User.id.in_(per))).all())
        if per
        else {}
    )
    return {
        "cases": len(multi),
        "case_agreement_rate": agreeing / len(multi) if multi else None,
        "reviewers": [
            {
                "reviewer_id": pseudonyms.get(rid, str(rid)),
                "reviews": len(hits),
                "agreement_rate": sum(hits) / len(hits),
            }
            for rid, hits in sorted(per.items())
        ],
    }


def get_task_for_case(session: Session, case: Case) -> Task:
    task = session.get(Task, case.task_id)
    if task is None:
        raise NotFound("task not found")
    return task
