"""Transactional outbox: jobs are recorded with the change that needs them and pushed to
Redis only after that change committed (by :func:`service.uow.unit_of_work`, or the periodic
``relay_outbox`` job). A Redis outage delays work; it never loses it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Retry
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import queues
from service.db import utcnow
from service.models import OutboxEntry

log = logging.getLogger(__name__)

#: ``session.info`` key: this transaction recorded jobs, so the unit of work pushes them once
#: it has committed (and forgets the mark either way).
RECORDED = "outbox_recorded"


def defer(
    session: Session,
    func: str,
    *,
    queue: queues.QueueSpec,
    job_id: str | None = None,
    request_id: str | None = None,
    **kwargs: Any,
) -> OutboxEntry:
    """Record a job (by dotted path, arguments are ids) to enqueue after commit."""
    entry = OutboxEntry(
        queue=queue.name, func=func, kwargs=kwargs, job_id=job_id, request_id=request_id
    )
    session.add(entry)
    session.info[RECORDED] = True
    return entry


def relay(session: Session, redis: Redis, *, limit: int = 500) -> int:
    """Push pending entries to RQ; returns how many were enqueued. Caller commits.

    Deterministic job ids make this safe to run twice: RQ refuses a duplicate unique job,
    which we treat as already enqueued.
    """
    entries = session.scalars(
        select(OutboxEntry)
        .where(OutboxEntry.enqueued_at.is_(None))
        .order_by(OutboxEntry.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    sent = 0
    for entry in entries:
        spec = queues.ALL[entry.queue]
        queue = queues.rq_queue(spec.name, redis)
        meta = {"request_id": entry.request_id} if entry.request_id else {}
        try:
            live = live_job_created_at(redis, entry.job_id) if entry.job_id else None
            if live is not None and live < entry.created_at:
                # An earlier run with this id is still queued or running (a training job
                # that has just finished its work but not yet returned): enqueueing now would
                # be refused as a duplicate and this request would be lost ("queued" with
                # nothing queued). Leave the entry pending: the next relay sends it.
                continue
            if live is not None:
                pass  # this entry's own job, sent by a relay whose commit was lost
            else:
                queue.enqueue(
                    entry.func,
                    kwargs=entry.kwargs,
                    job_id=entry.job_id,
                    job_timeout=spec.job_timeout,
                    retry=Retry(max=spec.max_retries, interval=list(spec.retry_intervals)),
                    result_ttl=spec.result_ttl,
                    failure_ttl=7 * 86_400,
                    meta=meta,
                    description=f"{entry.func}({entry.kwargs})",
                )
        except RedisError as exc:
            entry.attempts += 1
            entry.last_error = f"{type(exc).__name__}: {exc}"[:1000]
            log.warning("outbox relay stopped: redis unavailable (%s)", type(exc).__name__)
            break
        entry.enqueued_at = utcnow()
        sent += 1
    return sent


def live_job_created_at(redis: Redis, job_id: str) -> datetime | None:
    """When the job with this id that is waiting or running was created; None if none is
    (so one may be enqueued now)."""
    from rq.job import Job, JobStatus

    try:
        job = Job.fetch(job_id, connection=redis, serializer=queues.SERIALIZER)
    except Exception:  # NoSuchJobError and deserialisation problems alike: not live
        return None
    status = job.get_status(refresh=False)
    if status not in (
        JobStatus.QUEUED,
        JobStatus.STARTED,
        JobStatus.DEFERRED,
        JobStatus.SCHEDULED,
    ):
        return None
    created = job.created_at or datetime.now(UTC)
    return created if created.tzinfo else created.replace(tzinfo=UTC)
