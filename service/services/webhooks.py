"""Webhook events: recorded as deliveries in the same transaction as the change, delivered by
the webhooks queue (Standard Webhooks signatures, retries with backoff)."""

from __future__ import annotations

import json
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service import queues
from service.db import utcnow
from service.errors import Conflict, Forbidden, NotFound
from service.models import OutboxEntry, Task, WebhookDelivery
from service.services import audit, outbox
from service.services.audit import Actor

EVENT_TYPES = (
    "case.resolved",
    "case.corrected",
    "model.activated",
    "automation.changed",
    "drift.detected",
)
DELIVER_JOB = "workers.jobs.webhooks.deliver"
#: A pending delivery this old whose job is gone (e.g. Redis flushed) is queued again.
STUCK_DELIVERY_AFTER = timedelta(minutes=10)


def emit(
    session: Session,
    task: Task,
    event_type: str,
    data: dict[str, Any],
    *,
    request_id: str | None = None,
) -> WebhookDelivery | None:
    """Queue one event for the task's webhook; nothing happens when none is configured."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event {event_type!r}")
    if not task.webhook_url:
        return None
    message_id = "msg_" + secrets.token_hex(12)
    payload = {
        "type": event_type,
        "timestamp": utcnow().isoformat().replace("+00:00", "Z"),
        "task": task.name,
        "data": json.loads(json.dumps(data, default=str)),
    }
    delivery = WebhookDelivery(
        message_id=message_id,
        task_id=task.id,
        event_type=event_type,
        payload=payload,
        url=task.webhook_url,
        status="pending",
    )
    session.add(delivery)
    session.flush()
    outbox.defer(
        session,
        DELIVER_JOB,
        queue=queues.WEBHOOKS,
        job_id=f"webhook-{message_id}",
        request_id=request_id,
        delivery_id=delivery.id,
    )
    return delivery


def redeliver_stuck(session: Session) -> int:
    """Queue again the pending deliveries whose job was lost (e.g. Redis flushed); how many.
    RQ's own retries handle ordinary failures, and the deterministic job id prevents two
    delivery jobs for one message."""
    cutoff = utcnow() - STUCK_DELIVERY_AFTER
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
    return len(stuck)


DELIVERY_STATUSES = ("pending", "delivered", "failed")
REPLAYABLE = ("failed", "delivered")


def list_deliveries(
    session: Session,
    task: Task,
    *,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[WebhookDelivery], int]:
    """Deliveries of a task, newest first; failed ones stay listed until replayed."""
    where = [WebhookDelivery.task_id == task.id]
    if status is not None:
        where.append(WebhookDelivery.status == status)
    total = session.scalar(select(func.count()).select_from(WebhookDelivery).where(*where)) or 0
    rows = session.scalars(
        select(WebhookDelivery)
        .where(*where)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), int(total)


def get_delivery(session: Session, delivery_id: int, actor: Actor) -> WebhookDelivery:
    delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
    if delivery is None:
        raise NotFound("webhook delivery not found", {"delivery_id": str(delivery_id)})
    task = session.get(Task, delivery.task_id)
    if task is None or not actor.may_access(task.name):
        raise Forbidden("not allowed to use this task", {"delivery_id": str(delivery_id)})
    return delivery


def replay_job_id(session: Session, delivery: WebhookDelivery) -> str:
    """``webhook-{message_id}-r{n}``: n counts earlier replays (their outbox entries), so each
    replay gets a fresh deterministic job id and never collides with the spent original."""
    prefix = f"webhook-{delivery.message_id}-r"
    earlier = session.scalar(
        select(func.count()).select_from(OutboxEntry).where(OutboxEntry.job_id.like(prefix + "%"))
    )
    return f"{prefix}{int(earlier or 0) + 1}"


def replay(
    session: Session, delivery: WebhookDelivery, actor: Actor, *, request_id: str | None = None
) -> str:
    """Send a failed (or already delivered) event again with the same message id, so a
    receiver that deduplicates on ``webhook-id`` stays correct. Returns the new job id.

    The attempt counter restarts (the replay gets the full retry schedule); what it was
    before is kept in the audit event.
    """
    if delivery.status not in REPLAYABLE:
        raise Conflict(
            "the delivery is still pending: it is being retried on its backoff schedule",
            {"status": delivery.status},
        )
    job_id = replay_job_id(session, delivery)
    before = {
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
    }
    delivery.status = "pending"
    delivery.attempts = 0
    delivery.next_attempt_at = utcnow()
    audit.record(
        session,
        "webhook.replayed",
        actor,
        task_id=delivery.task_id,
        details={
            "delivery_id": delivery.id,
            "message_id": delivery.message_id,
            "event_type": delivery.event_type,
            "job_id": job_id,
            "before": before,
        },
        request_id=request_id,
    )
    outbox.defer(
        session,
        DELIVER_JOB,
        queue=queues.WEBHOOKS,
        job_id=job_id,
        request_id=request_id,
        delivery_id=delivery.id,
    )
    session.flush()
    return job_id


def delivery_view(delivery: WebhookDelivery) -> dict[str, Any]:
    """What an admin sees of a delivery: never the task's secret, nor URL credentials."""
    return {
        "id": str(delivery.id),
        "message_id": delivery.message_id,
        "event_type": delivery.event_type,
        "url": redact_url(delivery.url),
        "status": delivery.status,
        "attempts": delivery.attempts,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "next_attempt_at": delivery.next_attempt_at,
        "delivered_at": delivery.delivered_at,
        "created_at": delivery.created_at,
        "payload": delivery.payload,
    }


def redact_url(url: str) -> str:
    """The URL with any password in it masked: for every place a webhook URL is shown or
    recorded (task views, audit events, deliveries)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
