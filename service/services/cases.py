"""Reading cases and recording the application's late ground truth (SPEC §6)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import utcnow
from service.errors import Conflict, Forbidden, NotFound, ValidationFailed
from service.models import Case, Task, User
from service.services import audit, labels, webhooks
from service.services.audit import Actor
from service.services.predict import case_view


def get_case(session: Session, case_id: str, actor: Actor, *, for_update: bool = False) -> Case:
    stmt = select(Case).where(Case.id == case_id)
    if for_update:
        stmt = stmt.with_for_update()
    case = session.scalar(stmt)
    if case is None:
        raise NotFound("case not found", {"case_id": case_id})
    task_name = session.scalar(select(Task.name).where(Task.id == case.task_id))
    if task_name is None or not actor.may_access(task_name):
        raise Forbidden("not allowed to read this case", {"case_id": case_id})
    return case


def case_detail(session: Session, case: Case) -> dict[str, Any]:
    """``GET /cases/{id}``: the predict result plus the final label and its history."""
    view = case_view(case)
    resolved_by = None
    if case.label_source == "reviewer":
        resolved_by = "reviewer"
    elif case.label_source == "application":
        resolved_by = "application"
    elif case.label_source == "model":
        resolved_by = "model"
    reviewer_ids = {r.reviewer_id for r in case.reviews}
    pseudonyms = (
        dict(
            session.execute(select(User.id, User.pseudonym).where(User.id.in_(reviewer_ids))).all()
        )
        if reviewer_ids
        else {}
    )
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
                    "reviewer_id": pseudonyms.get(r.reviewer_id, str(r.reviewer_id)),
                    "label": r.label,
                    "decided_at": _iso(r.decided_at),
                    "duration_ms": r.duration_ms,
                    "agreed_with_model": r.agreed_with_model,
                    "retracted": r.retracted_at is not None,
                }
                for r in case.reviews
            ],
        }
    )
    return view


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def record_outcome(
    session: Session, case_id: str, label: str, actor: Actor, *, request_id: str | None = None
) -> Case:
    """Ground truth from the application.

    Resolves a case still waiting for a person (source ``application``); on an automatic
    answer it confirms or corrects the model (``corrected`` + webhook); a case a reviewer
    already resolved keeps the reviewer's label (never silently overwritten) and the outcome
    is stored beside it. A second, different outcome is a conflict.
    """
    case = get_case(session, case_id, actor, for_update=True)
    task = session.get(Task, case.task_id)
    assert task is not None
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
    first_human_label = case.human_label is None
    if first_human_label:
        case.human_label = label
        case.human_labelled_at = now
    if case.status in ("pending", "in_review"):
        case.status = "resolved"
        case.final_label = label
        case.label_source = "application"
        case.resolved_at = now
        case.queue_state = None
        case.lease_owner_id = None
        case.lease_expires_at = None
        event = "case.resolved"
    elif case.status == "auto" and case.label_source == "model":
        # Ground truth is in: the audit review this case was waiting for is no longer needed.
        if case.queue_state == "waiting":
            case.queue_state = None
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
    if first_human_label:
        labels.label_recorded(session, task, case, request_id=request_id)
    notify(session, task, case, event, request_id=request_id)
    return case


def notify(
    session: Session, task: Task, case: Case, event: str | None, *, request_id: str | None = None
) -> None:
    """Fire a case webhook, only when the task has one (building the payload reads the case
    and its reviews). Every resolution path (review, outcome) announces itself here."""
    if event is not None and task.webhook_url:
        webhooks.emit(session, task, event, case_detail(session, case), request_id=request_id)
