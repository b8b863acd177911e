"""Fault injection against real, private PostgreSQL / Redis servers and real processes
(web server, RQ workers): outages, restarts and SIGKILLs must lose nothing and corrupt nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from redis import Redis
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from service import queues
from service.models import Case, OutboxEntry, Task, WebhookDelivery
from tests.faults.fault_infra import ROOT, VENV_BIN, WebServer, app_env, make_token, wait_for
from tests.helpers import SIMPLE_TASK, good_input

pytestmark = pytest.mark.slow


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def run_python(env: dict[str, str], code: str, timeout: float = 60) -> str:
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


RELAY = (
    "from tandem.app import create_app\n"
    "from workers import context\n"
    "app = create_app(); context.set_app(app)\n"
    "from workers.jobs.maintenance import relay_outbox\n"
    "print(relay_outbox())\n"
)


class Receiver:
    """A webhook receiver whose behaviour the test scripts: 'ok', 'fail' (500) or 'hang'."""

    def __init__(self) -> None:
        self.modes: list[str] = []
        self.default = "ok"
        self.seen: list[dict[str, str]] = []
        self.client_ports: list[int] = []
        self.hit = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                self.rfile.read(length)
                outer.seen.append({k.lower(): v for k, v in self.headers.items()})
                outer.client_ports.append(self.client_address[1])
                mode = outer.modes.pop(0) if outer.modes else outer.default
                outer.hit.set()
                if mode == "hang":
                    time.sleep(20)
                self.send_response(500 if mode == "fail" else 204)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def create_task(base: str, admin: str, engine: Any, webhook_url: str | None = None) -> int:
    resp = httpx.post(base + "/api/v1/tasks", json=SIMPLE_TASK, headers=bearer(admin), timeout=10)
    assert resp.status_code == 201, resp.text
    with Session(engine) as session:
        task = session.scalar(select(Task).where(Task.name == SIMPLE_TASK["name"]))
        assert task is not None
        if webhook_url:
            task.webhook_url = webhook_url
            task.revision += 1
        session.commit()
        return task.id


def emit_webhook(engine: Any, task_id: int) -> int:
    from service.services import webhooks

    with Session(engine) as session:
        task = session.get(Task, task_id)
        delivery = webhooks.emit(
            session, task, "case.resolved", {"case_id": "c1"}, request_id="fault-req"
        )
        assert delivery is not None
        session.commit()
        return delivery.id


def predict(base: str, token: str, **kw: Any) -> httpx.Response:
    return httpx.post(
        base + "/api/v1/tasks/loan-review/predict",
        json={"input": good_input()},
        headers=bearer(token),
        timeout=kw.pop("timeout", 10),
        **kw,
    )


# ------------------------------------------------------------------------------ Redis


def test_redis_outage_keeps_predict_up_and_loses_no_work(
    private_pg: Any, private_redis: Any, pg_engine: Any, home: Path
) -> None:
    env = app_env(private_pg, private_redis, home)
    web = WebServer(env)
    web.start()
    receiver = Receiver()
    try:
        admin, app_token = make_token(pg_engine, "admin"), make_token(pg_engine, "app")
        task_id = create_task(web.base, admin, pg_engine, webhook_url=receiver.url)
        assert httpx.get(web.base + "/readyz").status_code == 200

        private_redis.stop()
        started = time.monotonic()
        answers = [predict(web.base, app_token).status_code for _ in range(20)]
        assert answers == [202] * 20
        assert time.monotonic() - started < 15  # Redis being down costs no request its time
        train = httpx.post(
            web.base + "/api/v1/tasks/loan-review/models/train", headers=bearer(admin), timeout=10
        )
        assert train.status_code == 202, train.text
        job_id = train.json()["job_id"]
        delivery_id = emit_webhook(pg_engine, task_id)
        ready = httpx.get(web.base + "/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["redis"].startswith("unavailable")
        assert ready.json()["checks"]["database"] == "ok"
        with Session(pg_engine) as session:
            pending = session.scalars(
                select(OutboxEntry.func).where(OutboxEntry.enqueued_at.is_(None))
            ).all()
            assert "workers.jobs.training.train_task" in pending  # held, not lost
            assert session.scalar(select(func.count()).select_from(Case)) == 20

        private_redis.start()  # an empty Redis: everything it held is gone
        assert int(run_python(env, RELAY).strip().splitlines()[-1]) >= 2
        redis = Redis.from_url(private_redis.url)
        assert job_id in queues.rq_queue(queues.TRAINING.name, redis).job_ids
        drained = drain_webhooks(env)
        assert drained.returncode == 0, drained.stderr[-2000:]
        with Session(pg_engine) as session:
            delivery = session.get(WebhookDelivery, delivery_id)
            assert delivery is not None and delivery.status == "delivered"
            assert (
                session.scalar(
                    select(func.count())
                    .select_from(OutboxEntry)
                    .where(OutboxEntry.enqueued_at.is_(None))
                )
                == 0
            )
        assert len(receiver.seen) == 1
        assert httpx.get(web.base + "/readyz").status_code == 200
    finally:
        receiver.close()
        web.stop()


# ------------------------------------------------------------------------- PostgreSQL


def test_postgres_restart_fails_fast_then_recovers(
    private_pg: Any, private_redis: Any, pg_engine: Any, home: Path
) -> None:
    web = WebServer(app_env(private_pg, private_redis, home))
    web.start()
    try:
        admin, app_token = make_token(pg_engine, "admin"), make_token(pg_engine, "app")
        create_task(web.base, admin, pg_engine)
        ok = sum(predict(web.base, app_token).status_code == 202 for _ in range(10))
        assert ok == 10
        pg_engine.dispose()

        private_pg.stop()
        for _ in range(5):
            started = time.monotonic()
            resp = predict(web.base, app_token)
            assert time.monotonic() - started < 5, "a dead database must fail fast"
            assert resp.status_code == 503
            assert resp.json()["error"]["code"] == "unavailable"
            ok += 0
        assert httpx.get(web.base + "/readyz", timeout=10).status_code == 503
        assert httpx.get(web.base + "/healthz").status_code == 200

        private_pg.start()
        restarted = time.monotonic()
        wait_for(lambda: predict(web.base, app_token).status_code == 202, timeout=15, interval=0.2)
        recovered_in = time.monotonic() - restarted
        assert recovered_in < 10
        ok += 1
        statuses = [predict(web.base, app_token).status_code for _ in range(10)]
        assert statuses == [202] * 10
        ok += 10
        assert httpx.get(web.base + "/readyz", timeout=10).status_code == 200
        with Session(pg_engine) as session:
            rows = session.execute(select(Case.status, Case.route, Case.queue_state)).all()
            assert len(rows) == ok  # nothing half-written, nothing lost
            assert {tuple(r) for r in rows} == {("pending", "review", "waiting")}
    finally:
        web.stop()


# ------------------------------------------------------------- SIGKILL mid-request


def waiting_inserts(engine: Any) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query ILIKE '%INSERT INTO cases%'"
                )
            ).scalar()
            or 0
        )


def test_web_worker_killed_mid_request_then_retry_makes_one_case(
    private_pg: Any, private_redis: Any, pg_engine: Any, home: Path
) -> None:
    web = WebServer(app_env(private_pg, private_redis, home), workers=1)
    web.start()
    try:
        admin, app_token = make_token(pg_engine, "admin"), make_token(pg_engine, "app")
        create_task(web.base, admin, pg_engine)
        predict(web.base, app_token)  # warm the worker (task cache, pool)
        headers = {**bearer(app_token), "Idempotency-Key": "order-42"}
        body = {"input": good_input(review="killed mid-flight")}
        url = web.base + "/api/v1/tasks/loan-review/predict"

        # Hold the cases table so the request is provably in flight inside its transaction.
        blocker = pg_engine.connect()
        tx = blocker.begin()
        try:
            blocker.execute(text("LOCK TABLE cases IN EXCLUSIVE MODE"))
            with ThreadPoolExecutor(1) as pool:
                future = pool.submit(httpx.post, url, json=body, headers=headers, timeout=30)
                # Poll from another connection: pg_stat_activity is a per-transaction snapshot.
                wait_for(lambda: waiting_inserts(pg_engine) >= 1, timeout=15, interval=0.2)
                (pid,) = web.worker_pids()
                os.kill(pid, signal.SIGKILL)
                with pytest.raises(httpx.HTTPError):
                    future.result()
        finally:
            tx.rollback()
            blocker.close()

        # the web server replaces the worker; the client retries with the same key.
        wait_for(lambda: web.worker_pids() and web.worker_pids() != [pid], timeout=15)
        first = wait_for(
            lambda: httpx.post(url, json=body, headers=headers, timeout=10), timeout=20
        )
        again = httpx.post(url, json=body, headers=headers, timeout=10)
        assert first.status_code == again.status_code == 202
        assert first.json()["case_id"] == again.json()["case_id"]
        with Session(pg_engine) as session:
            n = session.scalar(
                select(func.count()).select_from(Case).where(Case.idempotency_key == "order-42")
            )
        assert n == 1
    finally:
        web.stop()


# ------------------------------------------------------------ workers and webhooks


def start_worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(VENV_BIN / "tandem"), "worker", "--queues", "webhooks", "--with-scheduler"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def drain_webhooks(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A real `tandem worker` that runs the webhook queue dry and exits."""
    return subprocess.run(
        [str(VENV_BIN / "tandem"), "worker", "--queues", "webhooks", "--burst", "--no-scheduler"],
        env=env,
        cwd=ROOT,
        timeout=60,
        capture_output=True,
        text=True,
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def relay_now(engine: Any, redis_url: str) -> None:
    from service.services import outbox

    with Session(engine) as session:
        outbox.relay(session, Redis.from_url(redis_url))
        session.commit()


def test_worker_killed_mid_delivery_retries_and_completes(
    private_pg: Any, private_redis: Any, pg_engine: Any, home: Path
) -> None:
    env = app_env(private_pg, private_redis, home)
    receiver = Receiver()
    receiver.modes = ["hang"]
    worker = start_worker(env)
    try:
        with Session(pg_engine) as session:
            task = Task(
                name="hooks",
                labels=["a", "b"],
                fields=[{"name": "x", "type": "text"}],
                policy={},
                review={},
                webhook_url=receiver.url,
            )
            session.add(task)
            session.commit()
            task_id = task.id
        delivery_id = emit_webhook(pg_engine, task_id)
        relay_now(pg_engine, private_redis.url)
        assert receiver.hit.wait(30), "the worker never started the delivery"
        # SIGKILL, in the middle of the HTTP call, the process that owns the client side of
        # the receiver's connection: the worker itself, which runs deliveries in-process
        # (workers/runner.py, IN_PROCESS_QUEUES), not a work horse nor its scheduler.
        port = receiver.client_ports[0]
        sender = wait_for(
            lambda: next(
                (
                    c.pid
                    for c in psutil.net_connections("tcp")
                    if c.laddr and c.laddr.port == port and c.pid
                ),
                None,
            ),
            10,
        )
        assert sender == worker.pid
        os.kill(sender, signal.SIGKILL)
        worker.wait(10)
        with Session(pg_engine) as session:
            half = session.get(WebhookDelivery, delivery_id)
            assert half is not None and half.status == "pending"  # no half state
        # A supervisor restarts the worker; the job, no longer heartbeating, is swept as
        # abandoned (heartbeat 30 s, sweep every 30 s even when idle: ~40 s here) and RQ's
        # retry sends it again.
        worker = start_worker(env)
        wait_for(
            lambda: _delivery(pg_engine, delivery_id).status == "delivered",
            timeout=120,
            interval=0.5,
        )
        done = _delivery(pg_engine, delivery_id)
        assert done.attempts == 1 and done.delivered_at is not None
        ids = {h["webhook-id"] for h in receiver.seen}
        assert len(receiver.seen) == 2 and len(ids) == 1  # same message id: receivers dedupe
    finally:
        stop_worker(worker)
        receiver.close()


def _delivery(engine: Any, delivery_id: int) -> WebhookDelivery:
    with Session(engine) as session:
        row = session.get(WebhookDelivery, delivery_id)
        assert row is not None
        return row


def test_receiver_down_backs_off_and_never_blocks_predict(
    private_pg: Any, private_redis: Any, pg_engine: Any, home: Path
) -> None:
    env = app_env(private_pg, private_redis, home)
    web = WebServer(env)
    web.start()
    receiver = Receiver()
    receiver.default = "hang"  # slow receiver: every call hangs past the worker's timeout
    receiver.modes = ["fail"]
    worker = start_worker(env)
    try:
        admin, app_token = make_token(pg_engine, "admin"), make_token(pg_engine, "app")
        task_id = create_task(web.base, admin, pg_engine, webhook_url=receiver.url)
        delivery_id = emit_webhook(pg_engine, task_id)
        relay_now(pg_engine, private_redis.url)
        wait_for(lambda: _delivery(pg_engine, delivery_id).attempts >= 1, timeout=20)
        first = _delivery(pg_engine, delivery_id)
        assert first.status == "pending" and first.last_status_code == 500
        assert first.next_attempt_at is not None  # the backoff is visible
        # While the retry hangs on the slow receiver, predict is unaffected.
        receiver.hit.clear()
        assert receiver.hit.wait(20), "no retry after the backoff"
        latencies = []
        for _ in range(20):
            t0 = time.monotonic()
            assert predict(web.base, app_token).status_code == 202
            latencies.append(time.monotonic() - t0)
        assert max(latencies) < 2.0
        gap = time.monotonic()
        assert len(receiver.seen) == 2
        # The second attempt times out (10 s); it is recorded and retried again later.
        wait_for(lambda: _delivery(pg_engine, delivery_id).attempts >= 2, timeout=20)
        second = _delivery(pg_engine, delivery_id)
        assert second.status == "pending" and "Timeout" in (second.last_error or "")
        assert second.next_attempt_at is not None
        assert time.monotonic() - gap < 20
    finally:
        stop_worker(worker)
        receiver.close()
        web.stop()


def test_json_logs_of_a_real_worker_carry_request_id(
    private_pg: Any, private_redis: Any, pg_engine: Any, home: Path
) -> None:
    env = app_env(private_pg, private_redis, home)
    receiver = Receiver()
    try:
        with Session(pg_engine) as session:
            task = Task(
                name="logs",
                labels=["a", "b"],
                fields=[{"name": "x", "type": "text"}],
                policy={},
                review={},
                webhook_url=receiver.url,
                webhook_secret="super-secret-value",
            )
            session.add(task)
            session.commit()
            task_id = task.id
        emit_webhook(pg_engine, task_id)
        relay_now(pg_engine, private_redis.url)
        out = drain_webhooks(env)
        assert out.returncode == 0, out.stderr[-2000:]
        lines = [json.loads(x) for x in (out.stdout + out.stderr).splitlines() if x.startswith("{")]
        in_job = [x for x in lines if x.get("job_id", "").startswith("webhook-")]
        assert in_job and all(x.get("request_id") == "fault-req" for x in in_job)
        assert "super-secret-value" not in out.stdout + out.stderr
        with Session(pg_engine) as session:
            session.execute(update(Task).where(Task.id == task_id).values(webhook_url=None))
            session.commit()
    finally:
        receiver.close()
