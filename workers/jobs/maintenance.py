"""Periodic housekeeping (run by the cron leader, see workers.schedule)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import case as sql_case
from sqlalchemy import func, select, update

from service import queues
from service.db import transaction, utcnow
from service.models import Case, ModelVersion, Task, WebhookDelivery
from service.redis_conn import get_redis
from service.services import audit, automation, outbox, training
from service.services.audit import SYSTEM
from service.services.webhooks import DELIVER_JOB
from workers.context import job

STUCK_DELIVERY_AFTER = timedelta(minutes=10)


@job
def relay_outbox() -> int:
    """Enqueue work recorded while Redis was unreachable (or whose relay raced a crash)."""
    total = 0
    while True:
        with transaction() as session:
            sent = outbox.relay(session, get_redis())
        total += sent
        if sent == 0:
            return total


@job
def expire_leases() -> int:
    """Return cases whose lease ran out to the queue, so no case waits on an absent reviewer."""
    now = utcnow()
    with transaction() as session:
        expired = session.execute(
            select(Case.id, Case.task_id, Case.lease_owner_id)
            .where(Case.queue_state == "leased", Case.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        ).all()
        for case_id, task_id, owner in expired:
            session.execute(
                update(Case)
                .where(Case.id == case_id)
                .values(
                    queue_state="waiting",
                    lease_owner_id=None,
                    lease_expires_at=None,
                    claimed_at=None,
                    status=sql_case((Case.status == "in_review", "pending"), else_=Case.status),
                )
            )
            audit.record(
                session,
                "case.lease_expired",
                SYSTEM,
                task_id=task_id,
                case_id=case_id,
                details={"reviewer_id": owner},
            )
    return len(expired)


@job
def redeliver_webhooks() -> int:
    """Re-queue pending deliveries whose job was lost (e.g. Redis flushed); RQ's own retries
    handle ordinary failures, and the deterministic job id prevents double delivery jobs."""
    cutoff = utcnow() - STUCK_DELIVERY_AFTER
    with transaction() as session:
        stuck = session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.status == "pending", WebhookDelivery.created_at < cutoff
            )
        ).all()
        for delivery in stuck:
            outbox.defer(
                session,
                DELIVER_JOB,
                queue=queues.WEBHOOKS,
                job_id=f"webhook-{delivery.message_id}",
                delivery_id=delivery.id,
            )
        if stuck:
            outbox.relay(session, get_redis())
    return len(stuck)


#: The scheduled retrain trigger: labels below ``retrain_every`` still reach a model within
#: this long after the last version was trained.
RETRAIN_AFTER = timedelta(hours=1)
#: A training job row left queued/started this long while RQ no longer knows the job (its
#: worker machine died and the registry was cleaned) is taken as lost and requested again.
LOST_JOB_AFTER = timedelta(minutes=5)


def _rq_job_live(job_id: str) -> bool:
    from rq.job import Job as RQJob
    from rq.job import JobStatus

    try:
        found = RQJob.fetch(job_id, connection=get_redis(), serializer=queues.SERIALIZER)
    except Exception:  # missing or unreadable: not live
        return False
    return found.get_status(refresh=False) in (
        JobStatus.QUEUED,
        JobStatus.STARTED,
        JobStatus.DEFERRED,
        JobStatus.SCHEDULED,
    )


@job
def retrain_check() -> list[str]:
    """Periodic retrain trigger (docs/learning.md): a task with human labels newer than its latest
    version (older than ``RETRAIN_AFTER``), or with labels and no version at all, gets a
    training job unless one is queued or running. Lost job rows are recovered first."""
    now = utcnow()
    requested: list[str] = []
    with transaction() as session:
        for task in session.scalars(select(Task).order_by(Task.id)).all():
            running = training.active_training_job(session, task)
            if running is not None:
                stamp = running.started_at or running.created_at
                if (
                    stamp is not None
                    and now - stamp > LOST_JOB_AFTER
                    and not _rq_job_live(running.id)
                ):
                    running.state = "failed"
                    running.error = "lost: the queue no longer holds this job"
                    running.finished_at = now
                    audit.record(
                        session,
                        "training.lost",
                        SYSTEM,
                        task_id=task.id,
                        details={"job_id": running.id},
                    )
                else:
                    continue
            latest = session.scalar(
                select(ModelVersion.trained_at)
                .where(ModelVersion.task_id == task.id, ModelVersion.trained_at.is_not(None))
                .order_by(ModelVersion.trained_at.desc())
                .limit(1)
            )
            newer = (
                select(func.count())
                .select_from(Case)
                .where(Case.task_id == task.id, Case.human_label.is_not(None))
            )
            if latest is not None:
                if now - latest < RETRAIN_AFTER:
                    continue
                newer = newer.where(Case.human_labelled_at > latest)
            if int(session.scalar(newer) or 0) == 0:
                continue
            training.request_training(session, task, SYSTEM, reason="schedule")
            requested.append(task.name)
        if requested:
            session.flush()
            outbox.relay(session, get_redis())
    return requested


@job
def drift_check() -> dict[str, Any]:
    """Label-free drift check of every task with an active model (docs/policy.md)."""
    reports: dict[str, Any] = {}
    with transaction() as session:
        for task in session.scalars(
            select(Task).where(Task.active_model_id.is_not(None)).order_by(Task.id)
        ).all():
            report = automation.drift_check(session, task)
            reports[task.name] = {
                k: report.get(k) for k in ("checked", "n", "score_psi", "warnings", "frozen")
            }
    return reports
