"""Automation state changes: the live watch that pulls automation back (SPEC §4.5).

Every change of a task's automation is made here, in the caller's transaction, together
with its audit event and webhooks, and bumps ``task.revision`` so predict processes pick it
up on their next request.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import utcnow
from service.models import Case, Task
from service.policy import DEFAULT_WINDOW, LiveStatus, Policy, live_error_alarm
from service.services import audit, webhooks
from service.services.audit import SYSTEM, Actor


def audited_auto_errors(session: Session, task: Task, window: int = DEFAULT_WINDOW) -> list[int]:
    """0/1 errors of the latest audited automatic answers of the active model that a human
    has labelled, oldest first (the live watch's evidence)."""
    rows = session.execute(
        select(Case.suggestion_label, Case.human_label)
        .where(
            Case.task_id == task.id,
            Case.audit.is_(True),
            Case.route == "auto",
            Case.model_version_id == task.active_model_id,
            Case.human_label.is_not(None),
        )
        .order_by(Case.human_labelled_at.desc())
        .limit(window)
    ).all()
    errors = [int(r.human_label != r.suggestion_label) for r in rows]
    errors.reverse()
    return errors


def live_status(session: Session, task: Task) -> LiveStatus:
    policy = Policy.from_dict(task.policy)
    return live_error_alarm(
        audited_auto_errors(session, task), alpha=policy.target_error, delta=policy.delta
    )


def after_audited_label(session: Session, task: Task, *, request_id: str | None = None) -> None:
    """Run the live test after an audited automatic answer got its human label."""
    if task.automation_state != "automating":
        return
    session.flush()
    status = live_status(session, task)
    if status.alarm:
        fall_back(session, task, SYSTEM, evidence=_status_dict(status), request_id=request_id)


def _status_dict(status: LiveStatus) -> dict[str, Any]:
    return {
        "n": status.n,
        "errors": status.errors,
        "estimate": status.estimate,
        "lower": status.lower,
        "upper": status.upper,
    }


def fall_back(
    session: Session,
    task: Task,
    actor: Actor,
    *,
    evidence: dict[str, Any],
    request_id: str | None = None,
) -> None:
    """Send every case to people at once and raise the audit rate; keep the model for
    suggestions. Automation resumes only through a new certification."""
    before = {
        "state": task.automation_state,
        "threshold": task.threshold,
        "coverage": task.coverage,
    }
    task.automation_state = "fallback"
    task.coverage = 0.0
    task.automation_changed_at = utcnow()
    task.revision += 1
    details = {
        "before": before,
        "after": {"state": "fallback"},
        "evidence": evidence,
        "reason": "live error shown to exceed the target",
    }
    audit.record(
        session,
        "automation.fallback",
        actor,
        task_id=task.id,
        details=details,
        request_id=request_id,
    )
    webhooks.emit(
        session, task, "drift.detected", {"kind": "live_error", **evidence}, request_id=request_id
    )
    webhooks.emit(
        session,
        task,
        "automation.changed",
        {"state": "fallback", "threshold": task.threshold, "previous": before},
        request_id=request_id,
    )
