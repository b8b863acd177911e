"""Periodic housekeeping (run by the cron leader, see workers.schedule)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import case as sql_case
from sqlalchemy import select, update

from service import queues
from service.db import transaction, utcnow
from service.models import Case, WebhookDelivery
from service.redis_conn import get_redis
from service.services import audit, outbox
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
