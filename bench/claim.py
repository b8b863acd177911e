"""Claim benchmark: 1,000,000 pending cases in PostgreSQL, 16 reviewers claiming and
deciding concurrently through the service layer (the same code the API runs).

Reports claim latency p50/p99, decision latency, round-trip throughput, and verifies from
the audit trail that no case was ever leased to two reviewers at once.

    .venv/bin/python bench/claim.py [--cases 1000000] [--reviewers 16] [--seconds 60]

Uses (and recreates) the database ``tandem_bench_claim`` on the local PostgreSQL server
(override with ``BENCH_DATABASE_URL``).
"""

from __future__ import annotations

import argparse
import itertools
import os
import secrets
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from service import migrate
from service.db import SessionFactory, db_session, make_engine
from service.models import AuditEvent, Case, Task, User
from service.services import review
from service.services.accounts import user_actor
from service.uow import unit_of_work

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/tandem_bench_claim"


def recreate_database(url: str) -> None:
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()


def load(engine, n_cases: int, reviewers: int) -> tuple[str, list]:  # type: ignore[no-untyped-def]
    """The task, the reviewers and ``n_cases`` waiting cases (5% audit-flagged; arrival
    spread over the last ~11 days so some are past the one-day SLA)."""
    with engine.begin() as conn:
        task_id = conn.execute(
            text(
                "INSERT INTO tasks (name, labels, fields, policy, review, automation_state,"
                " audit_multiplier, widening_frozen, revision,"
                " created_at, updated_at) VALUES ('bench', '[\"good\", \"bad\"]',"
                ' \'[{"name": "text", "type": "text", "required": true}]\','
                ' \'{"retrain_every": 100000000}\', \'{"lease_seconds": 300,'
                ' "reviewers_per_case": 1, "sla_seconds": 86400}\', \'manual\', 1.0, false,'
                " 1, now(), now()) RETURNING id"
            )
        ).scalar_one()
        started = time.perf_counter()
        conn.execute(
            text(
                "INSERT INTO cases (id, task_id, input, suggestion_label, confidence, route,"
                " reason, audit, label_probability, audit_rate, status, queue_state,"
                " reviews_required, created_at, updated_at)"
                " SELECT lpad(to_hex(i), 32, '0'), :task, json_build_object('text', 'case ' || i),"
                " 'good', 0.6, 'review', 'low_confidence', (i % 20 = 0), 1.0, 0.05, 'pending',"
                " 'waiting', 1, now() - make_interval(secs => (:n - i)),"
                " now() FROM generate_series(1, :n) AS i"
            ),
            {"task": task_id, "n": n_cases},
        )
        print(f"inserted {n_cases:,} cases in {time.perf_counter() - started:.1f}s")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE cases"))
    with unit_of_work() as session:
        users = []
        for i in range(reviewers):
            user = User(
                email=f"bench{i}@example.com",
                password_hash="-",
                role="reviewer",
                pseudonym="r_" + secrets.token_hex(6),
            )
            session.add(user)
            users.append(user)
        session.flush()
        actors = [user_actor(u) for u in users]
        name = session.scalar(select(Task.name).where(Task.id == task_id))
    assert name is not None
    return name, actors


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--reviewers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)

    recreate_database(url)
    engine = make_engine(url, pool_size=args.reviewers + 2, max_overflow=0, pool_timeout=30)
    migrate.upgrade(engine)
    SessionFactory.configure(bind=engine)
    task_name, actors = load(engine, args.cases, args.reviewers)

    claim_ms: list[float] = []
    decide_ms: list[float] = []
    conflicts = [0]
    lock = threading.Lock()
    barrier = threading.Barrier(len(actors))

    def work(actor) -> None:  # type: ignore[no-untyped-def]
        mine_claim: list[float] = []
        mine_decide: list[float] = []
        barrier.wait()
        deadline = time.perf_counter() + args.seconds
        try:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                with unit_of_work() as session:
                    claimed = review.claim(session, task_name, actor)
                    case_id = claimed.case.id if claimed else None
                t1 = time.perf_counter()
                mine_claim.append((t1 - t0) * 1000)
                if case_id is None:
                    break
                try:
                    with unit_of_work() as session:
                        review.submit_review(session, case_id, "good", actor)
                except review.Conflict:
                    conflicts[0] += 1
                mine_decide.append((time.perf_counter() - t1) * 1000)
        finally:
            db_session.remove()
            with lock:
                claim_ms.extend(mine_claim)
                decide_ms.extend(mine_decide)

    threads = [threading.Thread(target=work, args=(a,)) for a in actors]
    for t in threads:
        t.start()
    started = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started

    with unit_of_work() as session:
        resolved = session.scalar(
            select(func.count()).where(Case.task_id.isnot(None), Case.status == "resolved")
        )
        history: dict[str, list[str]] = defaultdict(list)
        for case_id, action in session.execute(
            select(AuditEvent.case_id, AuditEvent.action)
            .where(AuditEvent.action.in_(("case.claimed", "case.resolved", "case.released")))
            .order_by(AuditEvent.id)
        ):
            history[case_id].append(action)
    double = sum(
        1
        for events in history.values()
        if any(a == b == "case.claimed" for a, b in itertools.pairwise(events))
    )
    rounds = len(decide_ms)
    print(f"reviewers: {len(actors)}  waiting cases at start: {args.cases:,}")
    print(f"round trips (claim + decide): {rounds:,} in {elapsed:.1f}s = {rounds / elapsed:.0f}/s")
    print(
        f"claim  ms: p50 {statistics.median(claim_ms):.2f}  p90 {pct(claim_ms, 0.90):.2f}"
        f"  p99 {pct(claim_ms, 0.99):.2f}  max {max(claim_ms):.2f}"
    )
    print(f"decide ms: p50 {statistics.median(decide_ms):.2f}  p99 {pct(decide_ms, 0.99):.2f}")
    print(f"resolved cases: {resolved:,}  409 conflicts: {conflicts[0]}  double claims: {double}")
    engine.dispose()
    if double or resolved != rounds - conflicts[0]:
        sys.exit(1)


if __name__ == "__main__":
    main()
