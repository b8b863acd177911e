"""Webhooks end to end against a real HTTP receiver on 127.0.0.1: Standard Webhooks
signatures, retries then `failed`, replay, the deliveries API, and that a slow or dead
receiver never slows predict (which only writes a row)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from rq import SimpleWorker
from rq.job import Job
from sqlalchemy import select
from standardwebhooks import Webhook

from service import queues
from service.db import utcnow
from service.models import AuditEvent, OutboxEntry, Task, WebhookDelivery
from tests.helpers import SIMPLE_TASK, auth, good_input, make_token
from workers.context import set_app
from workers.jobs import webhooks as webhook_jobs

SECRET = "s3cret-value"


class Receiver:
    """A real HTTP endpoint: records each request, answers with ``status`` after ``delay``."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.delay = 0.0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                time.sleep(receiver.delay)
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def worker_app(flask_app: Any) -> Any:
    set_app(flask_app)
    return flask_app


def _create_task(client: Any, admin: str, url: str) -> None:
    body = {**SIMPLE_TASK, "webhook": {"url": url, "secret": SECRET}}
    resp = client.post("/api/v1/tasks", json=body, headers=auth(admin))
    assert resp.status_code == 201, resp.json


def _resolve_one(client: Any, app_token: str) -> str:
    """predict (queued: no model yet) then the application's outcome → ``case.resolved``."""
    resp = client.post(
        "/api/v1/tasks/loan-review/predict", json={"input": good_input()}, headers=auth(app_token)
    )
    assert resp.status_code == 202, resp.json
    case_id = resp.json["case_id"]
    out = client.post(
        f"/api/v1/cases/{case_id}/outcome", json={"label": "good"}, headers=auth(app_token)
    )
    assert out.status_code == 200, out.json
    return case_id


def _receiver_secret() -> str:
    """How a receiver derives its verification key from the secret it configured."""
    return "whsec_" + base64.b64encode(hashlib.sha256(SECRET.encode()).digest()).decode()


def test_delivery_is_signed_and_verifies(client, tokens, db, receiver, worker_app, redis_conn):
    _create_task(client, tokens["admin"], receiver.url)
    case_id = _resolve_one(client, tokens["app"])
    delivery = db.scalar(select(WebhookDelivery))
    assert delivery.status == "pending" and delivery.event_type == "case.resolved"
    assert webhook_jobs.deliver(delivery.id) == "delivered"
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    task = db.scalar(select(Task))
    assert webhook_jobs.signing_secret(task) == _receiver_secret()
    payload = Webhook(_receiver_secret()).verify(body, headers)
    assert payload["type"] == "case.resolved" and payload["task"] == "loan-review"
    assert payload["data"]["case_id"] == case_id and payload["data"]["final_label"] == "good"
    assert headers["webhook-id"] == delivery.message_id
    with pytest.raises(Exception, match="signature"):
        Webhook(_receiver_secret()).verify(body.replace(b"good", b"bad!"), headers)
    with pytest.raises(Exception, match="signature"):
        wrong = "whsec_" + base64.b64encode(b"not the key at all, 32 bytes....").decode()
        Webhook(wrong).verify(body, headers)
    db.expire_all()
    row = db.get(WebhookDelivery, delivery.id)
    assert (row.status, row.attempts, row.last_status_code) == ("delivered", 1, 200)
    assert row.delivered_at is not None and row.next_attempt_at is None
    # Delivered once; running the job again (a duplicate) sends nothing.
    assert webhook_jobs.deliver(delivery.id) == "nothing to do"
    assert len(receiver.requests) == 1


def test_failing_receiver_retries_fails_and_replay_delivers(
    client, tokens, db, receiver, worker_app, redis_conn
):
    _create_task(client, tokens["admin"], receiver.url)
    _resolve_one(client, tokens["app"])
    delivery_id = db.scalar(select(WebhookDelivery.id))
    receiver.status = 500
    before = utcnow()
    with pytest.raises(webhook_jobs.DeliveryFailed, match="HTTP 500"):
        webhook_jobs.deliver(delivery_id)
    db.expire_all()
    row = db.get(WebhookDelivery, delivery_id)
    assert (row.status, row.attempts, row.last_status_code, row.last_error) == (
        "pending",
        1,
        500,
        "HTTP 500",
    )
    assert row.next_attempt_at - before >= timedelta(seconds=queues.WEBHOOKS.retry_intervals[0])
    # RQ would retry on the backoff schedule; call the job for each retry instead of waiting.
    for _ in range(queues.WEBHOOKS.max_retries - 1):
        with pytest.raises(webhook_jobs.DeliveryFailed):
            webhook_jobs.deliver(delivery_id)
    assert webhook_jobs.deliver(delivery_id).startswith("failed after 9 attempts")
    db.expire_all()
    row = db.get(WebhookDelivery, delivery_id)
    assert (row.status, row.attempts, row.next_attempt_at) == ("failed", 9, None)
    assert len(receiver.requests) == 9

    admin = auth(tokens["admin"])
    listing = client.get(
        "/api/v1/tasks/loan-review/webhooks/deliveries?status=failed", headers=admin
    )
    assert listing.status_code == 200
    assert listing.json["total"] == 1
    shown = listing.json["deliveries"][0]
    assert shown["id"] == str(delivery_id) and shown["attempts"] == 9
    assert shown["last_error"] == "HTTP 500" and shown["payload"]["type"] == "case.resolved"
    assert SECRET not in listing.get_data(as_text=True)
    pending = client.get(
        "/api/v1/tasks/loan-review/webhooks/deliveries?status=pending", headers=admin
    )
    assert pending.json["total"] == 0

    resp = client.post(f"/api/v1/webhooks/deliveries/{delivery_id}/replay", headers=admin)
    assert resp.status_code == 202, resp.json
    message_id = shown["message_id"]
    assert resp.json["job_id"] == f"webhook-{message_id}-r1"
    assert resp.json["delivery"]["status"] == "pending" and resp.json["delivery"]["attempts"] == 0
    assert SECRET not in resp.get_data(as_text=True)
    # Deferred through the outbox and relayed to the webhooks queue after the commit.
    entry = db.scalar(select(OutboxEntry).where(OutboxEntry.job_id == resp.json["job_id"]))
    assert entry is not None and entry.enqueued_at is not None
    job = Job.fetch(resp.json["job_id"], connection=redis_conn, serializer=queues.SERIALIZER)
    assert job.origin == "webhooks" and job.kwargs == {"delivery_id": delivery_id}
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "webhook.replayed"))
    assert event.details["before"]["status"] == "failed"
    assert event.details["before"]["attempts"] == 9
    assert event.actor_type == "token"
    # Still pending (its job is queued): a second replay is refused.
    again = client.post(f"/api/v1/webhooks/deliveries/{delivery_id}/replay", headers=admin)
    assert again.status_code == 409

    receiver.status = 204
    assert webhook_jobs.deliver(delivery_id) == "delivered"
    headers, body = receiver.requests[-1]
    assert headers["webhook-id"] == message_id  # same id: receivers can deduplicate
    Webhook(_receiver_secret()).verify(body, headers)
    third = client.post(f"/api/v1/webhooks/deliveries/{delivery_id}/replay", headers=admin)
    assert third.status_code == 202 and third.json["job_id"] == f"webhook-{message_id}-r2"


def test_deliveries_api_is_admin_only_and_task_scoped(client, tokens, db, receiver, redis_conn):
    _create_task(client, tokens["admin"], receiver.url)
    _resolve_one(client, tokens["app"])
    delivery_id = db.scalar(select(WebhookDelivery.id))
    url = "/api/v1/tasks/loan-review/webhooks/deliveries"
    replay = f"/api/v1/webhooks/deliveries/{delivery_id}/replay"
    for role in ("app", "reviewer", "analyst"):
        assert client.get(url, headers=auth(tokens[role])).status_code == 403
        assert client.post(replay, headers=auth(tokens[role])).status_code == 403
    client.post(
        "/api/v1/tasks", json={**SIMPLE_TASK, "name": "other-task"}, headers=auth(tokens["admin"])
    )
    scoped = auth(make_token("admin", tasks=["other-task"]))
    assert client.get(url, headers=scoped).status_code == 403
    assert client.post(replay, headers=scoped).status_code == 403
    admin = auth(tokens["admin"])
    assert client.get(url + "?status=lost", headers=admin).status_code == 422
    assert (
        client.post("/api/v1/webhooks/deliveries/999999/replay", headers=admin).status_code == 404
    )
    # Pending deliveries are already on their way: not replayable.
    assert client.post(replay, headers=admin).status_code == 409


def test_slow_or_dead_receiver_never_blocks_predict(client, tokens, db, receiver, redis_conn):
    _create_task(client, tokens["admin"], receiver.url)
    receiver.delay = 3.0
    started = time.perf_counter()
    for _ in range(3):
        _resolve_one(client, tokens["app"])
    assert time.perf_counter() - started < 2.0
    assert receiver.requests == []  # requests only write rows; workers do the sending
    statuses = db.scalars(select(WebhookDelivery.status)).all()
    assert statuses == ["pending"] * 3
    # A receiver that is down: same.
    receiver.close()
    started = time.perf_counter()
    _resolve_one(client, tokens["app"])
    assert time.perf_counter() - started < 1.0


def test_real_rq_worker_delivers_from_the_outbox(
    flask_app, committed_db, redis_conn, receiver, worker_app
):
    client = flask_app.test_client()
    admin, app_token = make_token("admin"), make_token("app")
    _create_task(client, admin, receiver.url)
    _resolve_one(client, app_token)
    queue = queues.rq_queue(queues.WEBHOOKS.name, redis_conn)
    assert queue.count == 1  # relayed to Redis right after the request's commit
    SimpleWorker([queue], connection=redis_conn, serializer=queues.SERIALIZER).work(burst=True)
    assert len(receiver.requests) == 1
    headers, body = receiver.requests[0]
    assert json.loads(body)["type"] == "case.resolved"
    Webhook(_receiver_secret()).verify(body, headers)
    committed_db.expire_all()
    assert committed_db.scalar(select(WebhookDelivery.status)) == "delivered"
