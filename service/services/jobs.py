"""Queueing a tracked job: the ``jobs`` row people follow, the outbox entry that starts it
after commit, and the audit event that says who asked. Training and export snapshots are
queued here."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from service import queues
from service.models import Job
from service.services import audit, outbox
from service.services.audit import Actor


def queue_job(
    session: Session,
    job: Job,
    func: str,
    *,
    queue: queues.QueueSpec,
    actor: Actor,
    event: str,
    details: dict[str, Any],
    request_id: str | None = None,
    progress: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Job:
    """Mark ``job`` (new or finished) queued and record the job ``func(**kwargs)`` under the
    row's id (a relay that runs twice starts it once), with the audit event ``event``."""
    job.state = "queued"
    job.progress = progress or {}
    job.result = None
    job.error = None
    job.attempts = 0
    job.created_by = actor.label
    job.started_at = None
    job.finished_at = None
    session.add(job)
    session.flush()
    outbox.defer(session, func, queue=queue, job_id=job.id, request_id=request_id, **kwargs)
    audit.record(session, event, actor, task_id=job.task_id, details=details, request_id=request_id)
    return job
