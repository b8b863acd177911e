"""Tracked jobs: the ``jobs`` row people follow (``GET /jobs/{id}``), the outbox entry that
starts it after commit, and the audit event that says who asked. Training and export
snapshots are queued here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import queues
from service.errors import Forbidden, NotFound
from service.models import Job, Task
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


def job_view(session: Session, job_id: str, actor: Actor) -> dict[str, Any]:
    """A job's state, progress, result or error, for a caller allowed to see its task."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound("job not found", {"job_id": job_id})
    task_name = None
    if job.task_id is not None:
        task_name = session.scalar(select(Task.name).where(Task.id == job.task_id))
        if task_name is not None and not actor.may_access(task_name):
            raise Forbidden("not allowed to read this job", {"job_id": job_id})
    return {
        "id": job.id,
        "kind": job.kind,
        "task": task_name,
        "state": job.state,
        "progress": job.progress or {},
        "result": job.result,
        "error": job.error,
        "attempts": job.attempts,
        "created_by": job.created_by,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None
