"""Claim benchmark through the HTTP API: reviewers as separate processes, the server as
production runs it, 1,000,000 waiting cases (issue #20).

In one sitting, on the database ``tandem_bench_claim_http`` (recreated unless
``--keep-data``):

* **limit**, before each Tandem phase and at its pace: ``--reviewers`` processes each issue,
  over psycopg on a connection of their own, the claim's unavoidable work — the indexed
  single-row ``SELECT ... ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED`` on the queue
  index, the UPDATE that leases the row, the commit — then wait ``--think-ms``, then the
  decision's — the case's row locked, the review inserted, the case resolved, the commit;
* **Tandem**: ``tandem serve`` (granian, production defaults: 2 processes x 4 threads, JSON
  access log) and ``--reviewers`` processes, each a reviewer with a bearer token bound to
  their account, claiming (``POST /api/v1/tasks/bench/queue/claim``) and deciding
  (``POST /api/v1/cases/{id}/review``) on a kept-alive connection, ``--think-ms`` between a
  claim and its decision (a person reads the case).

Server-side latency is the web server's own (``duration_ms`` of each access-log line: from
the request's arrival to its response, waiting for a thread included). It then checks the
audit trail: no case claimed twice without a release or a resolution in between, and every
accepted decision resolved exactly one case; exit status 1 otherwise.

    .venv/bin/python bench/claim_http.py [--cases 1000000] [--reviewers 16] [--seconds 20]
"""

from __future__ import annotations

import argparse
import calendar
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
DB_NAME = "tandem_bench_claim_http"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")
TASK = "bench"

# Ordered as ix_cases_queue is (task, state, created_at): the scan stops at the first row.
CLAIM_SQL = (
    "SELECT id FROM cases WHERE task_id = %(task)s AND queue_state = 'waiting'"
    " ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED"
)
LEASE_SQL = (
    "UPDATE cases SET queue_state = 'leased', status = 'in_review', lease_owner_id = %(user)s,"
    " lease_expires_at = now() + interval '300 seconds', claimed_at = now() WHERE id = %(id)s"
)
RESOLVE_SQL = (
    "UPDATE cases SET queue_state = NULL, status = 'resolved', final_label = 'good',"
    " lease_owner_id = NULL, lease_expires_at = NULL, claimed_at = NULL WHERE id = %(id)s"
)
LOCK_SQL = "SELECT id FROM cases WHERE id = %(id)s FOR UPDATE"
REVIEW_SQL = (
    "INSERT INTO reviews (case_id, task_id, reviewer_id, label, decided_at)"
    " VALUES (%(id)s, %(task)s, %(user)s, 'good', now()) RETURNING id"
)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ the reviewer processes


def limit_reviewer(args: tuple[str, int, int, float, float, float]) -> dict[str, list[float]]:
    """The claim's and the decision's own SQL on one connection, ``think`` seconds apart as
    a Tandem phase's reviewers: ms per claim and per decision transaction."""
    dsn, task_id, user_id, start_at, seconds, think = args
    out: dict[str, list[float]] = {"claim": [], "decide": []}
    ids = {"task": task_id, "user": user_id}
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1")
        conn.commit()
        time.sleep(max(0.0, start_at - time.time()))
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            row = conn.execute(CLAIM_SQL, ids).fetchone()
            if row is None:
                conn.rollback()
                break
            conn.execute(LEASE_SQL, {**ids, "id": row[0]})
            conn.commit()
            out["claim"].append((time.perf_counter() - t0) * 1000)
            if think:
                time.sleep(think)
            t1 = time.perf_counter()
            conn.execute(LOCK_SQL, {"id": row[0]})
            conn.execute(REVIEW_SQL, {**ids, "id": row[0]}).fetchone()
            conn.execute(RESOLVE_SQL, {"id": row[0]})
            conn.commit()
            out["decide"].append((time.perf_counter() - t1) * 1000)
    return out


def http_reviewer(args: tuple[str, str, float, float, float]) -> dict[str, Any]:
    """One reviewer: claim, (think), decide, over one kept-alive HTTP connection."""
    base, token, start_at, seconds, think = args
    claim_ms: list[float] = []
    decide_ms: list[float] = []
    statuses: dict[str, int] = defaultdict(int)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        client.get("/healthz")
        time.sleep(max(0.0, start_at - time.time()))
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            resp = client.post(f"/api/v1/tasks/{TASK}/queue/claim")
            claim_ms.append((time.perf_counter() - t0) * 1000)
            statuses[f"claim {resp.status_code}"] += 1
            if resp.status_code != 200:
                break
            case_id = resp.json()["case_id"]
            if think:
                time.sleep(think)
            t1 = time.perf_counter()
            resp = client.post(f"/api/v1/cases/{case_id}/review", json={"label": "good"})
            decide_ms.append((time.perf_counter() - t1) * 1000)
            statuses[f"review {resp.status_code}"] += 1
    return {"claim": claim_ms, "decide": decide_ms, "status": dict(statuses)}


def run_processes(fn: Any, jobs: list[Any]) -> list[Any]:
    with ProcessPoolExecutor(len(jobs), mp_context=get_context("spawn")) as pool:
        return list(pool.map(fn, jobs))


# ------------------------------------------------------------------------------- set-up


def setup(db_url: str, n_cases: int, reviewers: int, keep: bool) -> tuple[int, list[Any]]:
    """The task, ``n_cases`` waiting cases, reviewers with tokens bound to them."""
    sys.path.insert(0, str(ROOT))
    from sqlalchemy import create_engine, text

    from bench.claim import load, recreate_database
    from service import migrate
    from service.db import SessionFactory, make_engine
    from service.models import Task, User
    from service.services import accounts
    from service.services.audit import SYSTEM
    from service.uow import unit_of_work

    if not keep:
        recreate_database(db_url)
    engine = make_engine(db_url)
    migrate.upgrade(engine)
    SessionFactory.configure(bind=engine)
    with unit_of_work() as session:
        task = session.query(Task).filter_by(name=TASK).one_or_none()
    if task is None:
        load(engine, n_cases, reviewers)
    else:
        waiting = (
            create_engine(db_url)
            .connect()
            .execute(text("SELECT count(*) FROM cases WHERE queue_state = 'waiting'"))
        )
        print(f"kept database: {waiting.scalar():,} cases waiting")
    with unit_of_work() as session:
        task_id = session.query(Task.id).filter_by(name=TASK).scalar()
        users = session.query(User).order_by(User.id).limit(reviewers).all()
        creds = []
        for user in users:
            token = accounts.create_token(
                session,
                role="reviewer",
                name=f"bench-{user.id}-{time.time_ns()}",
                task_scope=None,
                actor=SYSTEM,
                user_email=user.email,
            ).token
            creds.append((user.id, token))
    engine.dispose()
    return int(task_id), creds


def double_claims(dsn: str) -> tuple[int, int]:
    """Cases claimed twice with no release/resolution between (audit order is lock order),
    and resolved cases."""
    history: dict[str, list[str]] = defaultdict(list)
    with psycopg.connect(dsn) as conn:
        for case_id, action in conn.execute(
            "SELECT case_id, action FROM audit_events WHERE action IN"
            " ('case.claimed', 'case.resolved', 'case.released', 'case.lease_expired')"
            " ORDER BY id"
        ):
            history[case_id].append(action)
        resolved = conn.execute(
            "SELECT count(*) FROM audit_events WHERE action = 'case.resolved'"
        ).fetchone()
    double = sum(
        1
        for events in history.values()
        if any(a == b == "case.claimed" for a, b in itertools.pairwise(events))
    )
    return double, int(resolved[0]) if resolved else 0


def server_side(log: Path, since: float) -> dict[str, list[float]]:
    """duration_ms of every claim and review answered after ``since`` (access log)."""
    out: dict[str, list[float]] = {"claim": [], "decide": []}
    for line in log.read_text().splitlines():
        if not line.startswith('{"remote"'):
            continue
        entry = json.loads(line)
        stamp = calendar.timegm(time.strptime(entry["time"][:19], "%Y-%m-%d %H:%M:%S"))
        if stamp < int(since):
            continue
        if entry["path"].endswith("/queue/claim"):
            out["claim"].append(entry["duration_ms"])
        elif entry["path"].endswith("/review"):
            out["decide"].append(entry["duration_ms"])
    return out


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            p = psutil.Process(pid)
            for q in [p, *p.children(recursive=True)]:
                t = q.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            continue
    return total


def postgres_cpu() -> float:
    """CPU of the PostgreSQL backends serving this benchmark's database (their process
    title names it; the machine's other databases are not ours to count)."""
    total = 0.0
    for p in psutil.process_iter(["name", "cmdline"]):
        if (p.info["name"] or "").startswith("postgres") and DB_NAME in " ".join(
            p.info["cmdline"] or []
        ):
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                continue
    return total


def line(name: str, values: list[float]) -> str:
    return (
        f"{name:<34}{len(values):>8,}{statistics.median(values):>9.2f}"
        f"{pct(values, 0.9):>9.2f}{pct(values, 0.99):>9.2f}{max(values):>9.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--reviewers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--think-ms", default="0", help="comma-separated: one Tandem phase per value"
    )
    parser.add_argument("--keep-data", action="store_true", help="reuse the loaded database")
    parser.add_argument("--log", default=None, help="the web server's log (default: temp)")
    args = parser.parse_args()

    db_url = f"{PG}/{DB_NAME}"
    dsn = f"host=127.0.0.1 user=postgres dbname={DB_NAME}"
    started = time.perf_counter()
    task_id, creds = setup(db_url, args.cases, args.reviewers, args.keep_data)
    print(f"set-up {time.perf_counter() - started:.0f}s; load average {os.getloadavg()}")

    # Tandem over HTTP, each phase after the limit at the same pace.
    workdir = Path(tempfile.mkdtemp(prefix="tandem-claim-http-"))
    log = Path(args.log) if args.log else workdir / "serve.log"
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": REDIS_URL,
        "SECRET_KEY": "bench",
        "TANDEM_HOME": str(workdir),
        "TANDEM_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
    }
    with open(log, "w") as sink:
        web = subprocess.Popen(
            [str(BIN / "tandem"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    phases = []
    try:
        for _ in range(120):
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        # Warm-up: every web process and thread opens its connection, compiles statements.
        warm_at = time.time() + 1.5
        run_processes(http_reviewer, [(base, t, warm_at, 3.0, 0.0) for _, t in creds])
        for think in [float(x) / 1000 for x in args.think_ms.split(",")]:
            start_at = time.time() + 1.5
            limit = run_processes(
                limit_reviewer,
                [(dsn, task_id, uid, start_at, args.seconds, think) for uid, _ in creds],
            )
            limit_ms = {k: [x for part in limit for x in part[k]] for k in ("claim", "decide")}
            start_at = time.time() + 2.0
            cpu0 = (cpu_of([web.pid]), postgres_cpu())
            results = run_processes(
                http_reviewer, [(base, t, start_at, args.seconds, think) for _, t in creds]
            )
            cpu1 = (cpu_of([web.pid]), postgres_cpu())
            time.sleep(1.5)  # the access log is written after each response
            served = server_side(log, start_at)
            client = {
                "claim": [x for r in results for x in r["claim"]],
                "decide": [x for r in results for x in r["decide"]],
            }
            statuses: dict[str, int] = defaultdict(int)
            for r in results:
                for k, v in r["status"].items():
                    statuses[k] += v
            rounds = len(client["decide"])
            phases.append(
                {
                    "think": think,
                    "client": client,
                    "server": served,
                    "status": dict(statuses),
                    "rounds": rounds,
                    "limit": limit_ms,
                    "cpu_ms": {
                        "web": 1000 * (cpu1[0] - cpu0[0]) / max(1, rounds),
                        "postgres": 1000 * (cpu1[1] - cpu0[1]) / max(1, rounds),
                    },
                }
            )
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        web.wait(30)

    double, resolved = double_claims(dsn)
    print(
        f"\n{args.reviewers} reviewer processes, {args.seconds:.0f} s per phase, "
        f"{args.cases:,} cases waiting at the start; load average {os.getloadavg()}"
    )
    print(f"{'':<34}{'n':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    ok = double == 0
    for ph in phases:
        think_ms = ph["think"] * 1000
        limit_ms = ph["limit"]
        print(
            f"think {think_ms:.0f} ms: limit {len(limit_ms['decide']) / args.seconds:,.0f},"
            f" Tandem {ph['rounds'] / args.seconds:,.0f} claim + decision pairs/s"
        )
        print(line("  limit: claim SQL over psycopg", limit_ms["claim"]))
        print(line("  limit: decision SQL over psycopg", limit_ms["decide"]))
        print(line("  claim, server-side", ph["server"]["claim"]))
        print(line("  claim, at the reviewer", ph["client"]["claim"]))
        print(line("  decide, server-side", ph["server"]["decide"]))
        print(line("  decide, at the reviewer", ph["client"]["decide"]))
        print(
            f"  CPU per round trip: web {ph['cpu_ms']['web']:.2f} ms,"
            f" PostgreSQL {ph['cpu_ms']['postgres']:.2f} ms; statuses {ph['status']}"
        )
        for name in ("claim", "decide"):
            ours, bare = ph["server"][name], limit_ms[name]
            print(
                f"  {name} server-side / limit: p50"
                f" {statistics.median(ours) / statistics.median(bare):.1f}x,"
                f" p99 {pct(ours, 0.99) / pct(bare, 0.99):.1f}x"
            )
        bad = sum(v for k, v in ph["status"].items() if not k.endswith(("200", "204")))
        ok = ok and bad == 0
    print(
        f"double claims: {double}; cases resolved through the API: {resolved:,}"
        " (the warm-up's included)"
    )
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
