"""Deliver one webhook event with a Standard Webhooks signature.

Failures raise so RQ retries with the queue's backoff; the delivery row keeps the attempt
count and the last error visible, and a delivery that exhausted its retries stays `failed`
until someone replays it.
"""

from __future__ import annotations

import base64
import hashlib
import http.cookiejar
import json
import os
from datetime import datetime, timedelta

import httpx
from sqlalchemy import select, text
from standardwebhooks.webhooks import Webhook

from service import queues
from service.db import is_postgres, utcnow
from service.models import Task, WebhookDelivery
from service.services.webhooks import redact_url
from service.uow import unit_of_work
from workers.context import job

TIMEOUT_SECONDS = 10.0
#: Idle pooled connections are closed after this long: below the 5 s idle timeout common
#: servers apply (Node.js), so a delivery rarely picks a connection the receiver just closed.
KEEPALIVE_SECONDS = 4.0

_client: httpx.Client | None = None
_client_pid: int | None = None


class DeliveryFailed(Exception):
    pass


def signing_secret(task: Task) -> str:
    """Standard Webhooks wants a base64 secret; derive a stable one from the task's secret."""
    raw = (task.webhook_secret or f"tandem-task-{task.id}").encode()
    return "whsec_" + base64.b64encode(hashlib.sha256(raw).digest()).decode()


def signed_headers(task: Task, message_id: str, body: str, when: datetime) -> dict[str, str]:
    signature = Webhook(signing_secret(task)).sign(message_id, when, body)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "tandem-webhooks/1",
    }


def http_client() -> httpx.Client:
    """The process's pooled client: deliveries reuse its TLS context and its kept-alive
    connections. A client per delivery (``httpx.post``) built an SSL context from the CA
    bundle (~30 ms) and opened a new connection (a TLS handshake on https) every time.

    Redirects are not followed; no cookie is ever kept, so nothing one receiver sets is sent
    to another (or back to it). A forked process builds its own: connections are not shared.
    """
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        no_cookies = http.cookiejar.CookieJar(
            http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
        )
        _client = httpx.Client(
            timeout=TIMEOUT_SECONDS,
            follow_redirects=False,
            cookies=no_cookies,
            limits=httpx.Limits(
                max_connections=100,
                max_keepalive_connections=20,
                keepalive_expiry=KEEPALIVE_SECONDS,
            ),
        )
        _client_pid = os.getpid()
    return _client


def retry_delay(attempts: int) -> timedelta:
    """Backoff before attempt ``attempts + 1`` (the webhooks queue's retry intervals)."""
    intervals = queues.WEBHOOKS.retry_intervals
    return timedelta(seconds=intervals[min(max(attempts, 1), len(intervals)) - 1])


@job
def deliver(delivery_id: int) -> str:
    with unit_of_work() as session:
        found = session.execute(
            select(WebhookDelivery, Task)
            .join(Task, Task.id == WebhookDelivery.task_id)
            .where(WebhookDelivery.id == delivery_id)
        ).one_or_none()
        if found is None or found[0].status == "delivered":
            return "nothing to do"
        delivery, task = found
        body = json.dumps(delivery.payload, separators=(",", ":"), sort_keys=True)
        headers = signed_headers(task, delivery.message_id, body, utcnow())
        url = delivery.url
    error: str | None = None
    status_code: int | None = None
    try:
        response = http_client().post(url, content=body, headers=headers)
        status_code = response.status_code
        if not 200 <= response.status_code < 300:
            error = f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        # httpx may quote the URL: never store or log the credentials it may hold.
        error = f"{type(exc).__name__}: {exc}".replace(url, redact_url(url))[:500]
    with unit_of_work() as session:
        if is_postgres(session):
            # Don't wait for this commit's WAL flush (~4 ms a commit measured while the
            # disk was busy: bench/README.md, "Webhooks"). What a database crash can lose
            # is this outcome only, never the delivery (its row was committed with the
            # event): a delivery whose "delivered" was lost stays pending and the sweeper
            # sends it again with the same webhook-id, which at-least-once allows.
            session.execute(text("SET LOCAL synchronous_commit = off"))
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        row.attempts += 1
        row.last_status_code = status_code
        if error is None:
            row.status = "delivered"
            row.delivered_at = utcnow()
            row.last_error = None
            row.next_attempt_at = None
            return "delivered"
        row.last_error = error
        exhausted = row.attempts > queues.WEBHOOKS.max_retries
        row.status = "failed" if exhausted else "pending"
        # When RQ's retry will run (its Retry uses the same intervals), so the deliveries
        # list can say when the next attempt is due; nothing is due once it failed.
        row.next_attempt_at = None if exhausted else utcnow() + retry_delay(row.attempts)
    if exhausted:
        return f"failed after {queues.WEBHOOKS.max_retries + 1} attempts: {error}"
    raise DeliveryFailed(error)
