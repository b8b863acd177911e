"""Webhook delivery throughput and lag (issue #17, point 6), in production mode.

Runs in one sitting, on PostgreSQL + Redis:

* a receiver in a process of its own: a threaded HTTP/1.1 server (keep-alive) that verifies
  every request with the ``standardwebhooks`` library, and records its arrival time, the
  event's own timestamp and which TCP connection carried it;
* the limit: the same number of signed POSTs of the same payload sent by a bare loop with
  one kept-alive ``httpx.Client`` (signing each, as a delivery does) — the unavoidable work;
* backlog: ``--deliveries`` reviewer decisions made through the service layer (claim +
  ``review.submit_review``, which emits ``case.resolved``; the outbox relayed after each
  commit as the API does) while no worker runs, then ``--workers`` worker processes started
  as ``tandem worker`` runs (all queues, the scheduler on); deliveries/s is measured from
  the first arrival to the last (the worker's start-up is not delivery cost);
* burst: with the workers running, decisions at ``--rate`` per second for
  ``--burst-seconds``; lag = arrival at the receiver - the event's timestamp.

Every delivery must arrive verified and end ``delivered`` in the database; the script exits
with status 1 otherwise.

Usage:  .venv/bin/python bench/webhooks.py [--deliveries 500] [--rate 20] [--burst-seconds 10]
            [--workers 1] [--worker-queues webhooks] [--receiver-delay-ms 0]
            [--profile worker.prof]
Needs:  PostgreSQL on 127.0.0.1:5432 (database ``tandem_bench_webhooks`` is recreated) and
        Redis on 127.0.0.1:6379 (database 10, flushed; ``--redis-url`` to change).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import pstats
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "tandem_bench_webhooks"
PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/10")
TASK = "hooks"
SECRET = "bench-webhook-secret"
FIELDS = [{"name": "review", "type": "text"}, {"name": "state", "type": "category"}]


def receiver_key() -> str:
    """The verification key a receiver derives from the task's secret (docs/webhooks.md)."""
    return "whsec_" + base64.b64encode(hashlib.sha256(SECRET.encode()).digest()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------ receiver


def run_receiver(port: int, delay: float) -> None:
    """The application's endpoint: verify, record, answer 204 (400 on a bad signature).

    ``GET /stats`` returns what arrived; ``POST /reset`` forgets it between phases."""
    from standardwebhooks import Webhook

    verifier = Webhook(receiver_key())
    lock = threading.Lock()
    state: dict[str, Any] = {"arrivals": [], "bad": 0, "connections": 0}
    numbers = itertools.count(1)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a client may reuse its connection

        def setup(self) -> None:
            super().setup()
            with lock:
                state["connections"] += 1
                self.connection_no = next(numbers)  # never reset: unique over the run

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            arrived = time.time()
            if self.path == "/reset":
                with lock:
                    state.update(arrivals=[], bad=0, connections=0)
                self._answer(204)
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                payload = verifier.verify(body, headers)
            except Exception:
                with lock:
                    state["bad"] += 1
                self._answer(400)
                return
            event_at = datetime.fromisoformat(payload["timestamp"].replace("Z", "+00:00"))
            if delay:
                time.sleep(delay)
            with lock:
                state["arrivals"].append(
                    (headers["webhook-id"], arrived, event_at.timestamp(), self.connection_no)
                )
            self._answer(204)

        def do_GET(self) -> None:
            with lock:
                body = json.dumps(state).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            return

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


class Receiver:
    def __init__(self, delay: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.process = multiprocessing.get_context("spawn").Process(
            target=run_receiver, args=(self.port, delay), daemon=True
        )
        self.process.start()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.reset()
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def reset(self) -> None:
        self.http.post("/reset")

    def stats(self) -> dict[str, Any]:
        return dict(self.http.get("/stats").json())

    def wait_for(
        self, expected: int, timeout: float, on_first: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Wait until ``expected`` distinct deliveries arrived; ``on_first(count)`` is
        called once, when the first ones are seen."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            arrived = len({a[0] for a in stats["arrivals"]})
            if arrived and on_first is not None:
                on_first(arrived)
                on_first = None
            if arrived >= expected or time.monotonic() > deadline:
                return stats
            time.sleep(0.2)

    def close(self) -> None:
        self.http.close()
        self.process.terminate()
        self.process.join(10)


# ------------------------------------------------------------------------- the product


def reset_database() -> str:
    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
    admin.dispose()
    return f"{PG}/{DB_NAME}"


def setup(db_url: str, redis_url: str, home: Path, hook_url: str, cases: int) -> Any:
    """Migrate, create the task (webhook to the receiver), a reviewer and ``cases`` queued
    cases (no model yet: every prediction waits for a person)."""
    from service import migrate
    from service.config import Settings
    from service.schemas.common import load
    from service.schemas.tasks import TaskCreateSchema
    from service.services import accounts, predict, tasks
    from service.services.audit import SYSTEM
    from service.uow import unit_of_work
    from tandem.app import create_app

    settings = Settings(
        database_url=db_url, redis_url=redis_url, home=home, secret_key="bench", embedded=False
    )
    app = create_app(settings)
    migrate.upgrade(app.extensions["tandem_engine"])
    with app.app_context():
        with unit_of_work() as session:
            definition = {
                "name": TASK,
                "labels": ["good", "bad"],
                "fields": FIELDS,
                "webhook": {"url": hook_url, "secret": SECRET},
            }
            tasks.create_task(session, load(TaskCreateSchema(), definition), SYSTEM)
            token = accounts.create_token(
                session, role="app", name="bench", task_scope=None, actor=SYSTEM
            )
            reviewer = accounts.create_user(
                session,
                email="reviewer@example.com",
                password="bench-password-123",
                role="reviewer",
                task_scope=None,
                actor=SYSTEM,
            )
            app_actor = accounts.authenticate_token(session, token.token)
            assert app_actor is not None
            app.config["BENCH_REVIEWER"] = accounts.user_actor(reviewer)
        for start in range(0, cases, 1000):
            items = [
                predict.PredictRequest(input={"review": f"case {i}", "state": "CA"})
                for i in range(start, min(cases, start + 1000))
            ]
            with unit_of_work() as session:
                predict.predict_batch(session, TASK, items, app_actor)
    return app


def decide(app: Any, count: int, rate: float | None) -> None:
    """``count`` reviewer decisions as the review API makes them: claim, submit (which emits
    ``case.resolved`` in the same transaction), relay the outbox after the commit. At most
    ``rate`` per second when given."""
    from service.api.common import relay_outbox
    from service.services import review
    from service.uow import unit_of_work

    actor = app.config["BENCH_REVIEWER"]
    started = time.monotonic()
    with app.app_context():
        for i in range(count):
            if rate:
                wait = started + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            with unit_of_work() as session:
                claimed = review.claim(session, TASK, actor)
                assert claimed is not None, "no case left to decide"
                case_id = claimed.case.id
            with unit_of_work() as session:
                decision = review.submit_review(session, case_id, "good", actor)
                assert decision.event == "case.resolved", decision.event
            relay_outbox()


def delivered_count(app: Any) -> dict[str, int]:
    from sqlalchemy import func, select

    from service.models import WebhookDelivery
    from service.uow import unit_of_work

    with app.app_context(), unit_of_work() as session:
        rows = session.execute(
            select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
        ).all()
    return {status: int(n) for status, n in rows}


def sample_payload(app: Any) -> dict[str, Any]:
    from sqlalchemy import select

    from service.models import WebhookDelivery
    from service.uow import unit_of_work

    with app.app_context(), unit_of_work() as session:
        payload = session.scalar(select(WebhookDelivery.payload).limit(1))
    assert payload is not None
    return dict(payload)


def start_workers(
    n: int, env: dict[str, str], queues: str | None, log: Path, profile: Path | None
) -> list[subprocess.Popen[bytes]]:
    """``tandem worker`` processes (the first one runs the scheduler, as a lone worker
    does; a profiled one runs in burst mode and stops when the queues are empty)."""
    procs = []
    for i in range(n):
        argv = [sys.executable]
        if profile is not None:
            argv += ["-m", "cProfile", "-o", str(profile)]
        argv += ["-m", "tandem.cli", "worker"]
        if queues:
            argv += ["--queues", queues]
        if i > 0:
            argv += ["--no-scheduler"]
        if profile is not None:
            argv += ["--burst"]
        with log.open("ab") as out:
            procs.append(
                subprocess.Popen(
                    argv, env=env, cwd=ROOT, stdout=out, stderr=out, start_new_session=True
                )
            )
    return procs


def cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> float:
    """CPU time of the worker processes, with that of the children they have reaped (the
    work horses a forking worker runs its jobs in)."""
    import psutil

    total = 0.0
    for proc in procs:
        try:
            t = psutil.Process(proc.pid).cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def worker_rss_mb(pid: int) -> float:
    """Resident memory of one worker process (its scheduler children not included)."""
    import psutil

    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1)
    except psutil.Error:
        return 0.0


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ------------------------------------------------------------------------------ measures


def bare_loop(url: str, payload: dict[str, Any], n: int) -> float:
    """Deliveries/s of the unavoidable work: sign and POST each body on one kept-alive
    connection, check the 2xx, nothing else."""
    from standardwebhooks import Webhook

    signer = Webhook(receiver_key())
    body = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    with httpx.Client(timeout=10) as client:
        started = time.perf_counter()
        for _ in range(n):
            message_id = "msg_" + secrets.token_hex(12)
            when = datetime.now(UTC)
            headers = {
                "webhook-id": message_id,
                "webhook-timestamp": str(int(when.timestamp())),
                "webhook-signature": signer.sign(message_id, when, body),
                "content-type": "application/json",
            }
            response = client.post(url, content=body, headers=headers)
            if not 200 <= response.status_code < 300:
                raise RuntimeError(f"receiver answered {response.status_code}")
        return n / (time.perf_counter() - started)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(stats: dict[str, Any]) -> dict[str, Any]:
    arrivals = sorted(stats["arrivals"], key=lambda a: a[1])
    ids = [a[0] for a in arrivals]
    lags = [a[1] - a[2] for a in arrivals]
    span = arrivals[-1][1] - arrivals[0][1] if len(arrivals) > 1 else 0.0
    return {
        "arrived": len(arrivals),
        "unique": len(set(ids)),
        "bad_signatures": stats["bad"],
        # Connections that carried deliveries (not the script's own /stats requests).
        "connections": len({a[3] for a in arrivals}),
        "per_second": (len(arrivals) - 1) / span if span else 0.0,
        "lag_p50": statistics.median(lags) if lags else 0.0,
        "lag_p99": pct(lags, 0.99) if lags else 0.0,
        "lag_max": max(lags) if lags else 0.0,
    }


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=500, help="backlog size")
    parser.add_argument("--rate", type=float, default=20.0, help="decisions/s in the burst")
    parser.add_argument("--burst-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--worker-queues", default=None, help="--queues for the workers (default: all)"
    )
    parser.add_argument("--receiver-delay-ms", type=float, default=0.0)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run one worker under cProfile (burst mode) on the backlog, write its profile"
        " here and print the top of it; the burst phase is skipped",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    if args.profile is not None:
        args.workers = 1

    from redis import Redis

    Redis.from_url(args.redis_url).flushdb()
    receiver = Receiver(args.receiver_delay_ms / 1000)
    home = Path(tempfile.mkdtemp(prefix="tandem-bench-webhooks-"))
    burst = 0 if args.profile else int(args.rate * args.burst_seconds)
    db_url = reset_database()
    print(f"load average at start: {load_average()}", flush=True)
    app = setup(db_url, args.redis_url, home, receiver.url, args.deliveries + burst)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the app's logging shows every request
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": args.redis_url,
        "SECRET_KEY": "bench",
        "TANDEM_HOME": str(home),
        "PYTHONPATH": str(ROOT),
    }
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    workers: list[subprocess.Popen[bytes]] = []
    failed = False
    try:
        # Backlog first: its payloads give the limit a body of the real size.
        decide(app, args.deliveries, None)
        payload = sample_payload(app)
        receiver.reset()
        limit = bare_loop(receiver.url, payload, args.deliveries)
        limit_stats = summarise(receiver.stats())
        results["limit"] = {"per_second": limit, "connections": limit_stats["connections"]}
        print(
            f"limit (bare loop, one kept-alive httpx.Client): {limit:,.0f} deliveries/s over"
            f" {limit_stats['connections']} connection(s)",
            flush=True,
        )

        receiver.reset()
        log = home / "worker.log"
        started = time.monotonic()
        workers = start_workers(args.workers, env, args.worker_queues, log, args.profile)
        first: list[tuple[int, float]] = []
        stats = receiver.wait_for(
            args.deliveries,
            timeout=max(120, args.deliveries * 1.0),
            on_first=lambda n: first.append((n, cpu_seconds(workers))),
        )
        spent = cpu_seconds(workers)
        if args.profile is not None:
            workers[0].wait(timeout=120)
        backlog = summarise(stats)
        backlog["seconds_from_start"] = time.monotonic() - started
        # CPU of the worker processes (and of the work horses they reaped) per delivery,
        # from the first arrivals on: what a delivery costs the worker, start-up excluded,
        # and less sensitive than the rate to what else the machine runs.
        counted = backlog["unique"] - first[0][0] if first else 0
        backlog["worker_cpu_ms"] = (spent - first[0][1]) / counted * 1000 if counted else 0.0
        backlog["worker_rss_mb"] = [worker_rss_mb(p.pid) for p in workers]
        results["backlog"] = backlog
        print(
            f"backlog: {backlog['unique']}/{args.deliveries} delivered by {args.workers}"
            f" worker(s), {backlog['per_second']:,.1f} deliveries/s (first to last arrival;"
            f" {backlog['seconds_from_start']:.1f} s from the worker's start), over"
            f" {backlog['connections']} connection(s); {backlog['bad_signatures']} bad"
            f" signature(s); {limit / max(backlog['per_second'], 1e-9):.1f}x the limit's"
            f" time per delivery; worker CPU {backlog['worker_cpu_ms']:.1f} ms a delivery;"
            f" worker RSS {backlog['worker_rss_mb']} MB",
            flush=True,
        )
        failed |= backlog["unique"] < args.deliveries or backlog["bad_signatures"] > 0

        if burst:
            receiver.reset()
            t0 = time.monotonic()
            decide(app, burst, args.rate)
            emitted = time.monotonic() - t0
            stats = receiver.wait_for(burst, timeout=max(120, burst * 1.0))
            result = summarise(stats)
            result["decisions_per_second"] = burst / emitted
            results["burst"] = result
            print(
                f"burst: {burst} decisions at {burst / emitted:.1f}/s; {result['unique']}"
                f" delivered; lag p50 {result['lag_p50']:.2f} s, p99 {result['lag_p99']:.2f} s,"
                f" max {result['lag_max']:.2f} s; {result['connections']} connection(s)",
                flush=True,
            )
            failed |= result["unique"] < burst or result["bad_signatures"] > 0
        time.sleep(1.0)  # the last deliveries' own commits
        statuses = delivered_count(app)
        results["statuses"] = statuses
        print(f"deliveries in the database: {statuses}", flush=True)
        failed |= statuses.get("delivered", 0) != args.deliveries + burst
    finally:
        stop_workers(workers)
        receiver.close()
    print(f"load average at the end: {load_average()}", flush=True)
    if args.profile is not None:
        pstats.Stats(str(args.profile)).sort_stats("cumulative").print_stats(30)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    if failed:
        print("FAILED: not every delivery arrived verified and ended delivered", flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
