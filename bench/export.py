"""Export benchmark: 1,000,000 cases in PostgreSQL, exported through the real HTTP stack.

Loads a separate database (``tandem_bench_export``) with COPY: one task with the credit_data
fields, 1M cases whose inputs are credit_data rows, a third of them reviewed. Then starts
the production web server (`tandem serve`, 1 worker process) and downloads CSV, JSON Lines
and Parquet at
100k and 1M rows, measuring rows per second and the peak RSS of the serving process (psutil,
sampled every 20 ms). Results go to stdout as a Markdown table.

The limit each download is compared with, measured in the same run right after it: the
export's own query (the same columns, filters and order, compiled by the service) wrapped in
``COPY (...) TO STDOUT (FORMAT csv)`` and read to the end by psycopg: what PostgreSQL needs to
produce the same rows as text. The ratio download time / COPY time is the result (issue #20:
<= 2).

    .venv/bin/python bench/export.py [--rows 1000000] [--small 100000] [--keep-data]
        [--formats csv,jsonl,parquet]
    BENCH_DB=tandem_bench_thru_export BENCH_REDIS_URL=redis://127.0.0.1:6379/5 ... (names)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG = os.environ.get("BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432")
DB_NAME = os.environ.get("BENCH_DB", "tandem_bench_export")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
TASK = "credit-bench"
T0 = datetime(2024, 1, 1, tzinfo=UTC)

NUMERIC = ("Seniority", "Time", "Age", "Expenses", "Income", "Assets", "Debt", "Amount", "Price")
CATEGORY = ("Home", "Marital", "Records", "Job")


def credit_rows() -> list[dict[str, Any]]:
    with open(ROOT / "service" / "datasets" / "credit_data.csv", newline="") as fh:
        out = []
        for rec in csv.DictReader(fh):
            row: dict[str, Any] = {}
            for name in NUMERIC:
                if rec[name] != "NA":
                    row[name.lower()] = float(rec[name])
            for name in CATEGORY:
                if rec[name] != "NA":
                    row[name.lower()] = rec[name]
            out.append(row)
        return out


def task_definition() -> dict[str, Any]:
    fields = [{"name": n.lower(), "type": "number", "required": False} for n in NUMERIC]
    fields += [{"name": n.lower(), "type": "category", "required": False} for n in CATEGORY]
    return {"name": TASK, "labels": ["good", "bad"], "fields": fields}


def setup_database(n_rows: int) -> str:
    """Create the database, the schema, task, users, token; COPY cases and reviews."""
    from service import migrate
    from service.db import configure, make_engine
    from service.models import Task
    from service.schemas.tasks import TaskCreateSchema
    from service.services.accounts import create_token, create_user
    from service.services.audit import SYSTEM
    from service.services.tasks import create_task
    from service.uow import unit_of_work

    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
    admin.dispose()
    engine = make_engine(f"{PG}/{DB_NAME}")
    migrate.upgrade(engine)
    configure(engine)
    with unit_of_work() as session:
        task = create_task(session, TaskCreateSchema().load(task_definition()), SYSTEM)
        users = [
            create_user(
                session,
                email=f"reviewer{i}@example.org",
                password="bench-password",
                role="reviewer",
                task_scope=None,
                actor=SYSTEM,
            )
            for i in range(20)
        ]
        token = create_token(
            session, role="analyst", name="bench", task_scope=None, actor=SYSTEM
        ).token
        session.flush()
        task_id = task.id
        user_ids = [u.id for u in users]
        assert session.get(Task, task_id) is not None

    rng = random.Random(7)
    inputs = credit_rows()
    started = time.perf_counter()
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        case_cols = (
            "id, task_id, external_id, input, suggestion_label, confidence, scores, "
            "model_version, route, reason, audit, label_probability, audit_rate, status, "
            "reviews_required, final_label, label_source, resolved_by_user_id, resolved_at, "
            "human_label, human_labelled_at, created_at, updated_at"
        )
        review_cols = (
            "case_id, task_id, reviewer_id, label, suggested_label, agreed_with_model, "
            "claimed_at, decided_at, duration_ms"
        )
        with cur.copy(f"COPY cases ({case_cols}) FROM STDIN") as cases_copy:
            reviews: list[tuple[Any, ...]] = []
            for i in range(n_rows):
                created = T0 + timedelta(milliseconds=250 * i)
                case_id = f"{int(created.timestamp() * 1000):012x}{i:020x}"
                good = rng.random()
                suggestion = "good" if good >= 0.5 else "bad"
                conf = max(good, 1 - good)
                version = 1 + i * 5 // n_rows
                if conf >= 0.8 and rng.random() < 0.9:
                    route, reason, status, source = "auto", "confident", "auto", "model"
                    final, resolver, resolved, human, human_at = (
                        suggestion,
                        None,
                        created,
                        None,
                        None,
                    )
                    audit = rng.random() < 0.05
                else:
                    route, reason, status = "review", "low_confidence", "resolved"
                    audit = False
                    decided = created + timedelta(seconds=rng.randint(5, 600))
                    label = (
                        suggestion
                        if rng.random() < 0.85
                        else ("bad" if suggestion == "good" else "good")
                    )
                    resolver = rng.choice(user_ids)
                    final, source, resolved, human, human_at = (
                        label,
                        "reviewer",
                        decided,
                        label,
                        decided,
                    )
                    reviews.append(
                        (case_id, task_id, resolver, label, suggestion, label == suggestion,
                         decided - timedelta(seconds=30), decided, rng.randint(2_000, 90_000))
                    )  # fmt: skip
                cases_copy.write_row(
                    (
                        case_id, task_id, f"app-{i}", json.dumps(inputs[i % len(inputs)]),
                        suggestion, conf, json.dumps({"good": round(good, 6),
                                                      "bad": round(1 - good, 6)}),
                        version, route, reason, audit, 1.0, 0.05, status, 1, final, source,
                        resolver, resolved, human, human_at, created, created,
                    )
                )  # fmt: skip
        with cur.copy(f"COPY reviews ({review_cols}) FROM STDIN") as reviews_copy:
            for rec in reviews:
                reviews_copy.write_row(rec)
        raw.commit()
        cur.execute("ANALYZE cases")
        cur.execute("ANALYZE reviews")
        raw.commit()
    finally:
        raw.close()
    print(
        f"loaded {n_rows:,} cases and {len(reviews):,} reviews in "
        f"{time.perf_counter() - started:.0f} s",
        file=sys.stderr,
    )
    engine.dispose()
    return token


def new_token() -> str:
    """An analyst token on the already loaded database (``--keep-data``)."""
    from service import migrate
    from service.db import configure, make_engine
    from service.services.accounts import create_token
    from service.services.audit import SYSTEM
    from service.uow import unit_of_work

    engine = make_engine(f"{PG}/{DB_NAME}")
    migrate.upgrade(engine)  # data loaded by an older checkout: bring the schema to head
    configure(engine)
    with unit_of_work() as session:
        return create_token(
            session, role="analyst", name="bench", task_scope=None, actor=SYSTEM
        ).token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PeakRss:
    """Samples the RSS of one process every 20 ms in a thread; ``peak`` in bytes."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def count_rows(fmt: str, data: bytes) -> int:
    if fmt == "csv":
        return data.count(b"\n") - 1  # no newlines inside bench values
    if fmt == "jsonl":
        return data.count(b"\n")
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(io.BytesIO(data)).metadata.num_rows)


def fetch(url: str, params: dict[str, str], headers: dict[str, str]) -> tuple[float, list[bytes]]:
    """GET, reading the streamed body in 1 MB reads; returns (time of first byte, chunks)."""
    req = urllib.request.Request(url + "?" + urllib.parse.urlencode(params), headers=headers)
    chunks: list[bytes] = []
    first = 0.0
    with urllib.request.urlopen(req, timeout=600) as resp:
        while True:
            chunk = resp.read1(1 << 20)
            if not chunk:
                break
            if not chunks:
                first = time.perf_counter()
            chunks.append(chunk)
    return first, chunks


def copy_seconds(created_to: datetime | None) -> float:
    """Seconds PostgreSQL takes to COPY the export's rows (same query) TO STDOUT as CSV."""
    import psycopg

    from service.db import make_engine
    from service.models import Task
    from service.services.export import ExportFilters, ExportSpec, build_query

    engine = make_engine(f"{PG}/{DB_NAME}")
    with engine.connect() as conn:
        task = conn.execute(text("SELECT * FROM tasks WHERE name = :n"), {"n": TASK}).one()
        row = Task(id=task.id, name=task.name, fields=task.fields, labels=task.labels)
        stmt = build_query(row, ExportSpec("csv", ExportFilters(created_to=created_to)))
        sql = str(stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
    engine.dispose()
    dsn = f"{PG}/{DB_NAME}".replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as raw:
        start = time.perf_counter()
        size = 0
        with raw.cursor().copy(f"COPY ({sql}) TO STDOUT (FORMAT csv)") as copy:
            for chunk in copy:
                size += len(chunk)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--keep-data", action="store_true", help="reuse the loaded database")
    parser.add_argument("--formats", default="csv,jsonl,parquet")
    args = parser.parse_args()
    formats = [f for f in args.formats.split(",") if f]

    token = new_token() if args.keep_data else setup_database(args.rows)
    port = free_port()
    home = Path(os.environ.get("BENCH_HOME", "/tmp/tandem-bench-export"))
    home.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DATABASE_URL": f"{PG}/{DB_NAME}",
        "REDIS_URL": REDIS_URL,
        "SECRET_KEY": secrets.token_hex(16),
        "TANDEM_HOME": str(home),
    }
    # The production web server (tandem/processes.py): one process, 4 request threads; the
    # `tandem` of the interpreter running this script, serving this checkout (a worktree
    # may use another checkout's virtualenv).
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "tandem"), "serve", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
        ],
        env={**env, "TANDEM_ACCESS_LOG": "0", "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                with urllib.request.urlopen(base + "/healthz", timeout=5) as ok:
                    if ok.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        worker_pid = psutil.Process(server.pid).children()[0].pid
        headers = {"Authorization": f"Bearer {token}"}
        url = f"{base}/api/v1/tasks/{TASK}/export"
        # The first `small` rows: a `to` filter on created_at (index range scan).
        small_to = (T0 + timedelta(milliseconds=250 * args.small)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        # Warm-up (imports, plans, caches) so the first measurement is not a cold start.
        fetch(url, {"format": "parquet", "to": T0.isoformat()}, headers)
        baseline = psutil.Process(worker_pid).memory_info().rss
        print(f"serving process RSS after warm-up: {baseline / 2**20:.0f} MB", file=sys.stderr)
        results = []
        sizes = [(args.small, {"to": small_to})] if args.small else []
        sizes.append((args.rows, {}))
        for rows, extra in sizes:
            for fmt in formats:
                with PeakRss(worker_pid) as rss:
                    start = time.perf_counter()
                    first, chunks = fetch(url, {"format": fmt, **extra}, headers)
                    elapsed = time.perf_counter() - start
                    first -= start
                data = b"".join(chunks)
                n = count_rows(fmt, data)
                assert n == rows, (fmt, n, rows)
                limit = copy_seconds(
                    T0 + timedelta(milliseconds=250 * args.small) if "to" in extra else None
                )
                results.append((fmt, n, elapsed, first or 0.0, len(data), rss.peak, limit))
                print(
                    f"{fmt:8} {n:>9,} rows {elapsed:6.1f} s {n / elapsed:>9,.0f} rows/s "
                    f"first byte {first:.2f} s, {len(data) / 2**20:7.1f} MB, "
                    f"peak RSS {rss.peak / 2**20:.0f} MB; COPY TO STDOUT {limit:.1f} s "
                    f"-> ratio {elapsed / limit:.2f}",
                    file=sys.stderr,
                )
                del data, chunks
        load = os.getloadavg()
        print(f"\nbaseline RSS after warm-up: {baseline / 2**20:.0f} MB; load average "
              f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")  # fmt: skip
        print(
            "| format | rows | seconds | rows/s | first byte | file size | peak RSS "
            "| limit: COPY TO STDOUT | ratio |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for fmt, n, elapsed, first, size, peak, limit in results:
            print(
                f"| {fmt} | {n:,} | {elapsed:.1f} | {n / elapsed:,.0f} | {first:.2f} s "
                f"| {size / 2**20:.0f} MB | {peak / 2**20:.0f} MB | {limit:.1f} s "
                f"| {elapsed / limit:.2f} |"
            )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
