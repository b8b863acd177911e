"""Reading cases and recording the application's late ground truth (docs/api.md)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from marshmallow import ValidationError as MarshmallowValidationError
from sqlalchemy import bindparam, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session, lazyload, selectinload
from sqlalchemy.orm.attributes import set_committed_value

from service.db import utcnow
from service.errors import Conflict, Forbidden, NotFound, ValidationFailed
from service.input_schema import validate_input
from service.models import AuditEvent, Case, Review, Task, User
from service.services import audit, labels, webhooks
from service.services.audit import Actor
from service.services.predict import case_view
from service.text_check import ensure_valid_text


def get_case(session: Session, case_id: str, actor: Actor, *, for_update: bool = False) -> Case:
    return get_case_and_task(session, case_id, actor, for_update=for_update)[0]


def get_case_and_task(
    session: Session, case_id: str, actor: Actor, *, for_update: bool = False
) -> tuple[Case, Task]:
    """The case and its task in one round trip (the task decides who may see the case), then
    the case's reviews.

    ``for_update`` locks the case row only, never the task's: every decision of the task
    would otherwise wait for the one before it. The reviews are read by a statement of their
    own after the lock is held, so a decision or an undo committed meanwhile is seen. The
    task's active model is not joined in (nothing here needs it; it loads on first use)."""
    stmt = _CASE_AND_TASK_FOR_UPDATE if for_update else _CASE_AND_TASK
    row = session.execute(stmt, {"case_id": case_id}).first()
    if row is None:
        raise NotFound("case not found", {"case_id": case_id})
    case, task = row
    if not actor.may_access(task.name):
        raise Forbidden("not allowed to read this case", {"case_id": case_id})
    load_reviews(session, case)
    return case, task


def load_reviews(session: Session, case: Case) -> None:
    """Read the case's reviews now unless the session holds them already (what the
    relationship's own ``selectin`` loading does, for ~half its CPU: bench/README.md,
    "Claim and decide on fewer CPU cycles")."""
    if "reviews" not in sa_inspect(case).dict:
        reviews = session.scalars(_REVIEWS_OF_CASE, {"case_id": case.id}).all()
        set_committed_value(case, "reviews", list(reviews))


# Built once: the decision's hottest reads (building them each time cost a quarter of
# their CPU).
_CASE_AND_TASK = (
    select(Case, Task)
    .join(Task, Task.id == Case.task_id)
    .where(Case.id == bindparam("case_id"))
    .options(lazyload(Task.active_model), lazyload(Case.reviews))
)
_CASE_AND_TASK_FOR_UPDATE = _CASE_AND_TASK.with_for_update(of=Case)
_REVIEWS_OF_CASE = select(Review).where(Review.case_id == bindparam("case_id")).order_by(Review.id)


def find_by_external_id(
    session: Session, task: Task, external_id: str, *, limit: int
) -> tuple[list[Case], bool]:
    """The cases of ``task`` (the caller checked the actor's scope) sent with
    ``external_id``, newest first, and whether more than ``limit`` exist. External ids are
    the application's own and not unique: a case sent twice (a retried batch without an
    idempotency key) is listed twice, so it can be reconciled (docs/api.md, "Finding a case
    by external_id")."""
    found = session.scalars(
        select(Case)
        .where(Case.task_id == task.id, Case.external_id == external_id)
        .order_by(Case.created_at.desc(), Case.id.desc())
        .limit(limit + 1)
        .options(selectinload(Case.reviews))
    ).all()
    return list(found[:limit]), len(found) > limit


#: Route reasons a reviewer is shown as they are. Every other one is shown as
#: ``low_confidence``: ``confident`` and ``audit`` exist only on cases drawn for the audit
#: sample, and ``policy`` says which label the model suggested (docs/review.md, "Blind
#: review").
REVIEWER_REASONS = frozenset(
    {"low_confidence", "cold_start", "fallback", "invalid_input", "forced"}
)
#: Roles that read the whole record of a case, audit flag included.
FULL_VIEW_ROLES = frozenset({"analyst", "admin"})


def reviewer_reason(reason: str) -> str:
    """The route reason as a reviewer sees it (the same for audited and other cases)."""
    return reason if reason in REVIEWER_REASONS else "low_confidence"


def _pseudonyms(session: Session, reviews: list[Review]) -> dict[int, str]:
    ids = {r.reviewer_id for r in reviews}
    if not ids:
        return {}
    return dict(session.execute(select(User.id, User.pseudonym).where(User.id.in_(ids))).all())


def people_on_case(session: Session, case: Case, events: list[AuditEvent]) -> dict[Any, str]:
    """Pseudonyms of everyone on the case page, by user id and by e-mail (events name
    their actor by e-mail, reviews by id): one identity per person."""
    ids: set[Any] = {r.reviewer_id for r in case.reviews}
    ids |= {e.details.get("reviewer_id") for e in events if isinstance(e.details, dict)}
    emails = {e.actor for e in events if e.actor_type == "user"}
    ids.discard(None)
    rows = session.execute(
        select(User.id, User.email, User.pseudonym).where(User.id.in_(ids) | User.email.in_(emails))
    ).all()
    out: dict[Any, str] = {}
    for uid, email, pseudonym in rows:
        out[uid] = pseudonym
        out[email] = pseudonym
    return out


def case_detail(session: Session, case: Case, *, everything: bool = False) -> dict[str, Any]:
    """``GET /cases/{id}`` as the application reads it (and as webhooks carry it): the
    predict result plus the final label and its history.

    Nothing in it tells whether the case was drawn for audit: no flag, and the reviews are
    listed only when reviewers decided the final label, undone ones left out (a verdict
    that confirmed an automatic answer, or one given after the application's own outcome,
    settles nothing the application sees). ``everything`` adds the audit flag, the inclusion
    probability and every review: analysts and admins only.
    """
    view = case_view(case)
    resolved_by = None
    if case.label_source == "reviewer":
        resolved_by = "reviewer"
    elif case.label_source == "application":
        resolved_by = "application"
    elif case.label_source == "model":
        resolved_by = "model"
    if everything:
        shown = list(case.reviews)
    elif case.label_source == "reviewer":
        shown = [r for r in case.reviews if r.retracted_at is None]  # the standing verdicts
    else:
        shown = []
    pseudonyms = _pseudonyms(session, shown)
    view.update(
        {
            "input": case.input,
            "final_label": case.final_label,
            "resolved_by": resolved_by,
            "resolved_at": _iso(case.resolved_at),
            "outcome": {"label": case.outcome_label, "reported_at": _iso(case.outcome_at)}
            if case.outcome_label
            else None,
            "reviews": [
                {
                    # The id the decision's answer gave (docs/review.md): a tool matches its
                    # decisions to the stored reviews by it.
                    "review_id": str(r.id),
                    "reviewer_id": pseudonyms.get(r.reviewer_id, str(r.reviewer_id)),
                    "label": r.label,
                    "decided_at": _iso(r.decided_at),
                    "duration_ms": r.duration_ms,
                    "agreed_with_model": r.agreed_with_model,
                    "retracted": r.retracted_at is not None,
                }
                for r in shown
            ],
        }
    )
    if everything:
        view["audit"] = bool(case.audit)
        # The weight /stats gives the case's human label (docs/stats.md); exports carry it.
        view["inclusion_probability"] = case.label_probability
    return view


def blind_view(session: Session, case: Case, task: Task, user_id: int | None) -> dict[str, Any]:
    """A case as a reviewer sees it (docs/review.md, "Blind review"): the same fields for
    every case, audited or not. No model suggestion, confidence or threshold, no status,
    route or final label (an automatic answer waiting for its audit would show), no audit
    flag, no other reviewer's decision, no count of reviewers needed (a second review is
    drawn among audits only); of the reviews, the caller's own, without ``agreed_with_model``
    (which would tell the model's answer after the fact, and an undo would then anchor)."""
    sla_seconds = int((task.review or {}).get("sla_seconds", 86_400))
    own = [r for r in case.reviews if user_id is not None and r.reviewer_id == user_id]
    pseudonyms = _pseudonyms(session, own)
    return {
        "case_id": case.id,
        "external_id": case.external_id,
        "task": task.name,
        "input": case.input,
        "reason": reviewer_reason(case.reason),
        "out_of_range": case.out_of_range,
        "created_at": _iso(case.created_at),
        "sla_breached": case.created_at < utcnow() - timedelta(seconds=sla_seconds),
        "queue_state": case.queue_state,
        "lease_expires_at": _iso(case.lease_expires_at),
        "claimed_at": _iso(case.claimed_at),
        "reviews": [
            {
                "review_id": str(r.id),
                "reviewer_id": pseudonyms.get(r.reviewer_id, str(r.reviewer_id)),
                "label": r.label,
                "decided_at": _iso(r.decided_at),
                "retracted": r.retracted_at is not None,
            }
            for r in own
        ],
    }


def case_detail_for(session: Session, case: Case, actor: Actor) -> dict[str, Any]:
    """The case as ``actor`` may read it: analysts and admins everything, reviewers the
    blind view (whatever the case's state: a reviewer who saw the model's answer or another
    reviewer's verdict could undo and decide again), applications :func:`case_detail`."""
    if actor.role in FULL_VIEW_ROLES:
        return case_detail(session, case, everything=True)
    if actor.role == "reviewer":
        task = session.get(Task, case.task_id)
        assert task is not None
        return blind_view(session, case, task, actor.id if actor.kind == "user" else None)
    return case_detail(session, case)


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def record_outcome(
    session: Session, case_id: str, label: str, actor: Actor, *, request_id: str | None = None
) -> Case:
    """Ground truth from the application, kept in ``outcome_label``.

    What the application sees follows the same rules for every case, drawn for audit or not
    (so outcomes cannot be used to tell audited cases apart): the outcome resolves a case
    still waiting for a person (source ``application``); on an automatic answer it confirms
    or corrects the model (``corrected`` + webhook); a case a reviewer already resolved keeps
    the reviewer's label and the outcome is stored beside it. A second, different outcome is
    a conflict.

    The human label is another matter (docs/api.md, "Outcomes"). On a case not drawn for
    audit the outcome becomes its human label, as it always did. On an audited case still
    waiting for its audit verdict it never does: the audit ledger holds people's blind
    verdicts only, so the case stays in the review queue (its lease, if any, too) and the
    reviewer's verdict becomes its human label.
    """
    case, task = get_case_and_task(session, case_id, actor, for_update=True)
    if label not in task.labels:
        raise ValidationFailed(
            f"unknown label {label!r}", {"label": [f"one of: {', '.join(task.labels)}"]}
        )
    if case.outcome_label is not None:
        if case.outcome_label == label:
            return case
        raise Conflict(
            "an outcome with a different label was already recorded",
            {"outcome": case.outcome_label},
        )
    now = utcnow()
    case.outcome_label = label
    case.outcome_at = now
    details: dict[str, Any] = {"label": label, "status_before": case.status}
    event = None
    audit_pending = bool(case.audit) and case.human_label is None
    first_human_label = case.human_label is None and not audit_pending
    if first_human_label:
        case.human_label = label
        case.human_labelled_at = now
    if audit_pending:
        details["audit_review"] = "pending"
    if case.status in ("pending", "in_review"):
        case.status = "resolved"
        case.final_label = label
        case.label_source = "application"
        case.resolved_at = now
        if not audit_pending:
            case.queue_state = None
            case.lease_owner_id = None
            case.lease_expires_at = None
        event = "case.resolved"
    elif case.status == "auto" and case.label_source == "model":
        if label != case.final_label:
            details["model_label"] = case.final_label
            case.status = "corrected"
            case.final_label = label
            case.label_source = "application"
            case.resolved_at = now
            event = "case.corrected"
    else:
        details["kept_label"] = case.final_label
        details["agrees"] = case.final_label == label
    audit.record(
        session,
        "case.outcome",
        actor,
        task_id=task.id,
        case_id=case.id,
        details=details,
        request_id=request_id,
    )
    after_human_label(
        session, task, case, event, new_label=first_human_label, request_id=request_id
    )
    return case


def after_human_label(
    session: Session,
    task: Task,
    case: Case,
    event: str | None,
    *,
    new_label: bool,
    request_id: str | None = None,
) -> None:
    """The tail of every path that gives a case a person's answer (a review, an application
    outcome): a new human label is counted (retraining and the live watch follow from it,
    :func:`service.services.labels.label_recorded`), and a resolution (``event``) is
    announced by webhook when the task has one (building the payload reads the case and its
    reviews)."""
    if new_label:
        labels.label_recorded(session, task, case, request_id=request_id)
    if event is not None and task.webhook_url:
        webhooks.emit(session, task, event, case_detail(session, case), request_id=request_id)


def repair_case(
    session: Session,
    case_id: str,
    *,
    values: dict[str, Any],
    redact: list[str],
    actor: Actor,
    request_id: str | None = None,
) -> Case:
    """An admin's correction of a stored case's inputs: new values for some fields, or
    fields redacted (set to null) — text that cannot be exported, or personal data that must
    go. The model's answer, the labels and the reviews stay as they were. The audit event
    names the fields, never their old or new values."""
    case, task = get_case_and_task(session, case_id, actor, for_update=True)
    specs = {spec["name"]: spec for spec in task.fields}
    unknown = sorted((set(values) | set(redact)) - set(specs))
    if unknown:
        raise ValidationFailed(
            f"unknown field(s): {', '.join(unknown)}",
            {name: ["Not a field of this task."] for name in unknown},
        )
    twice = sorted(set(values) & set(redact))
    if twice:
        raise ValidationFailed(
            f"a field is both given a value and redacted: {', '.join(twice)}",
            {name: ["Either a new value or redact, not both."] for name in twice},
        )
    if not values and not redact:
        raise ValidationFailed("nothing to repair", {"input": ["Give values or fields to redact."]})
    ensure_valid_text(values, "input")
    checked = [dict(specs[name], required=True) for name in values]
    try:
        clean = validate_input(checked, values) if values else {}
    except MarshmallowValidationError as exc:
        raise ValidationFailed("invalid values", {"input": exc.messages}) from exc
    new_input = dict(case.input or {})
    new_input.update({name: clean[name] for name in values})
    new_input.update({name: None for name in redact})
    case.input = new_input
    case.updated_at = utcnow()
    audit.record(
        session,
        "case.repaired",
        actor,
        task_id=task.id,
        case_id=case.id,
        details={"changed": sorted(values), "redacted": sorted(redact)},
        request_id=request_id,
    )
    return case
