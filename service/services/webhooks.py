"""Webhook events: recorded as deliveries in the same transaction as the change, delivered by
the webhooks queue (Standard Webhooks signatures, retries with backoff)."""

from __future__ import annotations

import json
import secrets
from typing import Any

from sqlalchemy.orm import Session

from service import queues
from service.db import utcnow
from service.models import Task, WebhookDelivery
from service.services import outbox

EVENT_TYPES = (
    "case.resolved",
    "case.corrected",
    "model.activated",
    "automation.changed",
    "drift.detected",
)
DELIVER_JOB = "workers.jobs.webhooks.deliver"


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
