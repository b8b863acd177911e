"""How the worker sends webhooks (bench/README.md, "Webhooks"): in the worker process itself
(no work horse per delivery), over one pooled kept-alive connection, each delivery still
signed and verified, a 500 still retried on the backoff, and the job still heartbeating while
a slow receiver holds it. Against a real HTTP/1.1 receiver on 127.0.0.1 that counts its
connections, and the real worker class (``TandemWorker``) in burst mode on real Redis."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from redis import Redis
from rq.job import Job
from sqlalchemy import select
from standardwebhooks import Webhook

from service import queues
from service.db import utcnow
from service.models import WebhookDelivery
from tests.helpers import make_token
from tests.stats.test_webhook_delivery import _create_task, _receiver_secret, _resolve_one
from workers.context import set_app
from workers.jobs import webhooks as webhook_jobs
from workers.runner import IN_PROCESS_QUEUES, MAINTENANCE_SECONDS, TandemWorker


class KeepAliveReceiver:
    """An HTTP/1.1 endpoint that keeps connections open (as most servers do) and numbers
    them; records every request with the connection that carried it."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        self.connections = 0
        self.status = 204
        self.set_cookie: str | None = None
        self.before_answer: Callable[[], None] | None = None
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with lock:
                    outer.connections += 1
                    self.number = outer.connections

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                outer.requests.append((headers, body, self.number))
                if outer.before_answer is not None:
                    outer.before_answer()
                self.send_response(outer.status)
                if outer.set_cookie:
                    self.send_header("set-cookie", outer.set_cookie)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # Kept-alive connections stay open in their handler threads: never wait for them.
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[KeepAliveReceiver]:
    r = KeepAliveReceiver()
    yield r
    r.close()


@pytest.fixture
def worker_app(flask_app: Any) -> Any:
    set_app(flask_app)
    return flask_app


@pytest.fixture
def own_pool() -> Iterator[None]:
    """This test's deliveries start with no pooled client (nor connection) of earlier tests."""
    webhook_jobs._client = None
    yield
    if webhook_jobs._client is not None:
        webhook_jobs._client.close()
    webhook_jobs._client = None


def run_worker(redis_conn: Redis, monitoring_interval: int = 10) -> None:
    """The worker `tandem worker --queues webhooks` runs, until the queue is empty."""
    queue = queues.rq_queue(queues.WEBHOOKS.name, redis_conn)
    TandemWorker(
        [queue],
        connection=redis_conn,
        serializer=queues.SERIALIZER,
        job_monitoring_interval=monitoring_interval,
        maintenance_interval=MAINTENANCE_SECONDS,
    ).work(burst=True)


def _statuses(session: Any) -> list[tuple[str, int]]:
    session.expire_all()
    rows = session.execute(
        select(WebhookDelivery.status, WebhookDelivery.attempts).order_by(WebhookDelivery.id)
    )
    return [(status, attempts) for status, attempts in rows]


def test_the_worker_delivers_in_process_over_one_kept_alive_connection(
    flask_app, committed_db, redis_conn, receiver, worker_app, own_pool
):
    assert queues.WEBHOOKS.name in IN_PROCESS_QUEUES
    client = flask_app.test_client()
    admin, app_token = make_token("admin"), make_token("app")
    _create_task(client, admin, receiver.url)
    for _ in range(5):
        _resolve_one(client, app_token)
    assert queues.rq_queue(queues.WEBHOOKS.name, redis_conn).count == 5
    run_worker(redis_conn)
    assert len(receiver.requests) == 5
    # One connection for all five: the deliveries shared the pool, and so ran in one process
    # (a work horse per job would have opened one each) — this one, the worker's.
    assert receiver.connections == 1
    assert {number for _, _, number in receiver.requests} == {1}
    assert webhook_jobs._client_pid == os.getpid()
    verifier = Webhook(_receiver_secret())
    for headers, body, _ in receiver.requests:
        assert verifier.verify(body, headers)["type"] == "case.resolved"
    sent = {headers["webhook-id"] for headers, _, _ in receiver.requests}
    assert sent == set(committed_db.scalars(select(WebhookDelivery.message_id)).all())
    assert _statuses(committed_db) == [("delivered", 1)] * 5
    # Nothing of a delivered job stays in Redis: the delivery row is the record.
    assert not any(Job.exists(f"webhook-{i}", redis_conn) for i in sent)
    assert not redis_conn.keys("rq:results:*")


def test_a_500_is_retried_on_the_backoff_then_delivered_with_the_same_id(
    flask_app, committed_db, redis_conn, receiver, worker_app, own_pool
):
    client = flask_app.test_client()
    _create_task(client, make_token("admin"), receiver.url)
    _resolve_one(client, make_token("app"))
    receiver.status = 500
    before = utcnow()
    run_worker(redis_conn)
    assert _statuses(committed_db) == [("pending", 1)]
    row = committed_db.scalar(select(WebhookDelivery))
    assert (row.last_status_code, row.last_error) == (500, "HTTP 500")
    assert row.next_attempt_at - before >= timedelta(seconds=queues.WEBHOOKS.retry_intervals[0])
    # RQ holds the retry until its backoff is over; requeue it now, as its scheduler will.
    queue = queues.rq_queue(queues.WEBHOOKS.name, redis_conn)
    job_id = f"webhook-{row.message_id}"
    assert queue.scheduled_job_registry.get_job_ids() == [job_id]
    due = queue.scheduled_job_registry.get_scheduled_time(job_id) - before
    assert due >= timedelta(seconds=queues.WEBHOOKS.retry_intervals[0] - 1)
    receiver.status = 204
    queue.scheduled_job_registry.requeue(job_id)
    run_worker(redis_conn)
    assert _statuses(committed_db) == [("delivered", 2)]
    assert [h["webhook-id"] for h, _, _ in receiver.requests] == [row.message_id] * 2
    for headers, body, _ in receiver.requests:
        Webhook(_receiver_secret()).verify(body, headers)


def test_no_cookie_is_kept_between_deliveries(
    client, tokens, db, receiver, worker_app, redis_conn, own_pool
):
    """One client serves every task's receivers: what one sets never travels to another."""
    _create_task(client, tokens["admin"], receiver.url)
    for _ in range(2):
        _resolve_one(client, tokens["app"])
    receiver.set_cookie = "session=from-the-receiver; Path=/"
    for delivery_id in db.scalars(select(WebhookDelivery.id).order_by(WebhookDelivery.id)):
        assert webhook_jobs.deliver(delivery_id) == "delivered"
    assert len(receiver.requests) == 2 and receiver.connections == 1
    assert all("cookie" not in headers for headers, _, _ in receiver.requests)


def test_an_in_process_delivery_keeps_its_job_heartbeating(
    flask_app, committed_db, redis_conn, receiver, worker_app, own_pool
):
    """No work horse means no parent watching the job: a thread beats for it, so a slow
    receiver is not taken for a dead worker (whose job another worker would run again)."""
    client = flask_app.test_client()
    _create_task(client, make_token("admin"), receiver.url)
    _resolve_one(client, make_token("app"))
    job_id = f"webhook-{committed_db.scalar(select(WebhookDelivery.message_id))}"
    held = threading.Event()
    beats: set[bytes] = set()
    beaten = threading.Event()

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not beaten.is_set():
            if held.is_set():
                beat = redis_conn.hget(Job.key_for(job_id), "last_heartbeat")
                if beat:
                    beats.add(beat)
                if len(beats) >= 3:  # the one seen first, then two new beats
                    beaten.set()
            time.sleep(0.05)

    def hold() -> None:
        held.set()
        beaten.wait(60)  # answer only once the job has beaten twice while waiting for us

    receiver.before_answer = hold
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run_worker(redis_conn, monitoring_interval=1)
    watcher.join(5)
    assert beaten.is_set(), f"heartbeats seen while the receiver held the delivery: {beats}"
    assert _statuses(committed_db) == [("delivered", 1)]


def test_a_lost_outcome_is_sent_again_with_the_same_webhook_id(
    flask_app, committed_db, redis_conn, receiver, worker_app, own_pool
):
    """The outcome of a delivery is committed without waiting for the WAL flush on
    PostgreSQL: a database crash may lose a "delivered" (never the delivery). The delivery is
    then pending again, and the sweeper sends it again under the same ``webhook-id``."""
    from sqlalchemy import update

    from service.services.webhooks import STUCK_DELIVERY_AFTER
    from workers.jobs.maintenance import redeliver_webhooks

    client = flask_app.test_client()
    _create_task(client, make_token("admin"), receiver.url)
    _resolve_one(client, make_token("app"))
    run_worker(redis_conn)
    assert _statuses(committed_db) == [("delivered", 1)]
    # As if the crash happened right after that commit, long enough ago for the sweeper.
    committed_db.execute(
        update(WebhookDelivery).values(
            status="pending",
            attempts=0,
            delivered_at=None,
            created_at=utcnow() - STUCK_DELIVERY_AFTER - timedelta(minutes=1),
        )
    )
    committed_db.commit()
    assert redeliver_webhooks() == 1
    run_worker(redis_conn)
    assert _statuses(committed_db) == [("delivered", 1)]
    message_id = committed_db.scalar(select(WebhookDelivery.message_id))
    assert [h["webhook-id"] for h, _, _ in receiver.requests] == [message_id] * 2
