"""CPU a claim + decision costs the web process, and where it goes (issue #20).

``bench/claim_http.py`` shows that reviewers wait for the web processes' CPU; this script
measures that CPU alone, without the noise of a loaded server: one process, one thread,
``--pairs`` claims and decisions sent straight into the WSGI app (the same middleware and
views ``tandem serve`` runs, no socket), by a reviewer whose token is bound to their
account, on PostgreSQL (the database ``tandem_bench_review_cpu``, recreated, 20,000 waiting
cases). It prints the CPU of one pair (``time.thread_time``: the median of ``--rounds``
rounds) beside its limit — the same statements with the same parameters sent through psycopg
alone, measured in alternating rounds — and, in a separate round, the CPU spent inside the
service functions named below
(a pair calls some of them twice: per pair, nested ones included in their callers).

    .venv/bin/python bench/review_cpu.py [--pairs 300] [--rounds 3]

``--profile`` instead prints cProfile's view of the same pairs grouped by library (CPU
time, so I/O waits do not count; the profiler itself makes everything ~3x slower), and the
Python function calls a pair makes: a count the machine's load does not move, for comparing
two versions of the code.
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DB_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/tandem_bench_review_cpu"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/6")

#: (module, function): the hot path's parts, outermost first.
TIMED = (
    ("service.services.accounts", "authenticate_token"),
    ("service.services.review", "claim"),
    ("service.services.review", "_task_and_leases"),
    ("service.services.review", "_lock_head"),
    ("service.services.review", "_lease_unless_reviewed"),
    ("service.services.review", "case_to_decide"),
    ("service.services.review", "decide"),
    ("service.services.review", "_write_review"),
    ("service.services.review", "_write_decision"),
    ("service.services.labels", "label_recorded"),
    ("service.services.labels", "_check_after_commit"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile, by library")
    args = parser.parse_args()

    pair = _setup()
    for _ in range(30):  # warm-up: connections, compiled statements, caches
        pair()

    if args.profile:
        _profile(pair, args.pairs)
        return
    replay = _limit(pair)
    per_pair, per_replay = [], []
    for _ in range(args.rounds):  # alternated, so both see the same machine
        started = time.thread_time()
        for _ in range(args.pairs):
            pair()
        per_pair.append(1000 * (time.thread_time() - started) / args.pairs)
        started = time.thread_time()
        for _ in range(args.pairs):
            replay()
        per_replay.append(1000 * (time.thread_time() - started) / args.pairs)
    tandem, limit = statistics.median(per_pair), statistics.median(per_replay)
    print(
        f"CPU per claim + decision: {tandem:.2f} ms (median of "
        f"{args.rounds} rounds of {args.pairs}: {', '.join(f'{x:.2f}' for x in per_pair)})"
    )
    print(
        f"limit, the same statements through psycopg alone: {limit:.2f} ms "
        f"({', '.join(f'{x:.2f}' for x in per_replay)}); Tandem / limit {tandem / limit:.1f}x"
    )

    spent = _timed_round(pair, args.pairs)
    print("\nInside the service (ms per pair; nested calls counted in their callers too):")
    for (module, name), ms in spent.items():
        print(f"  {ms:6.2f}  {module.rsplit('.', 1)[-1]}.{name}")
    print(f"\nload average {os.getloadavg()}")


def _setup() -> Callable[[], None]:
    """The database, a reviewer with a bound token, the app; returns one claim + decision."""
    from werkzeug.test import EnvironBuilder

    from bench.claim import load, recreate_database
    from service import migrate
    from service.config import Settings
    from service.db import SessionFactory, make_engine
    from service.models import User
    from service.services import accounts
    from service.services.audit import SYSTEM
    from service.uow import unit_of_work
    from tandem.app import create_app

    recreate_database(DB_URL)
    engine = make_engine(DB_URL)
    migrate.upgrade(engine)
    SessionFactory.configure(bind=engine)
    load(engine, 20_000, 1)
    with unit_of_work() as session:
        user = session.query(User).order_by(User.id).first()
        assert user is not None
        token = accounts.create_token(
            session,
            role="reviewer",
            name="review-cpu",
            task_scope=None,
            actor=SYSTEM,
            user_email=user.email,
        ).token
    engine.dispose()
    settings = Settings(
        database_url=DB_URL,
        redis_url=REDIS_URL,
        home=Path(tempfile.mkdtemp(prefix="tandem-review-cpu-")),
        secret_key="bench",
        embedded=False,
    )
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {token}"}

    def call(path: str, body: Any = None) -> tuple[str, bytes]:
        environ = EnvironBuilder(
            method="POST",
            path=path,
            headers=headers,
            data=json.dumps(body) if body is not None else None,
            content_type="application/json" if body is not None else None,
        ).get_environ()
        status: list[str] = []
        data = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
        return status[0], data

    def pair() -> None:
        status, data = call("/api/v1/tasks/bench/queue/claim")
        assert status.startswith("200"), (status, data[:300])
        case_id = json.loads(data)["case_id"]
        status, data = call(f"/api/v1/cases/{case_id}/review", {"label": "good"})
        assert status.startswith("200"), (status, data[:300])

    return pair


def _limit(pair: Callable[[], None]) -> Callable[[], None]:
    """The limit: the statements one claim + decision sent (listed by SQLAlchemy's
    ``before_cursor_execute``), sent again with the same parameters through psycopg alone on
    a connection of its own, each request's in a transaction rolled back (so the same case
    can be claimed and decided again), results read. What is left is what any Python
    client of PostgreSQL pays for these statements: no framework, no ORM, no HTTP."""
    import psycopg
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    sent: list[tuple[str, Any]] = []

    def listen(*args: Any) -> None:
        _conn, _cursor, statement, parameters, _context, _many = args
        sent.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", listen)
    try:
        pair()
    finally:
        event.remove(Engine, "before_cursor_execute", listen)
    # Each request opens with the token's query: a transaction ends before the next one.
    starts = [i for i, (sql, _) in enumerate(sent) if "FROM api_tokens" in sql]
    requests = [sent[a:b] for a, b in zip(starts, [*starts[1:], len(sent)], strict=True)]
    conn = psycopg.connect(DB_URL.replace("+psycopg", ""))

    def replay() -> None:
        with conn.cursor() as cursor:
            for statements in requests:
                for sql, parameters in statements:
                    if isinstance(parameters, list):
                        cursor.executemany(sql, parameters)
                    else:
                        cursor.execute(sql, parameters)
                    if cursor.description is not None:
                        cursor.fetchall()
                conn.rollback()

    return replay


def _timed_round(pair: Callable[[], None], pairs: int) -> dict[tuple[str, str], float]:
    """One round with ``time.thread_time`` around each function of :data:`TIMED`."""
    import importlib

    spent: dict[tuple[str, str], float] = defaultdict(float)
    originals = []
    for module_name, name in TIMED:
        module = importlib.import_module(module_name)
        original = getattr(module, name, None)
        if original is None:  # an older version of the code (a comparison run)
            continue
        originals.append((module, name, original))

        def timed(*a: Any, _f: Any = original, _k: Any = (module_name, name), **kw: Any) -> Any:
            started = time.thread_time()
            try:
                return _f(*a, **kw)
            finally:
                spent[_k] += time.thread_time() - started

        functools.update_wrapper(timed, original)
        setattr(module, name, timed)
        # Modules that imported the function by name call it through their own reference.
        for other in list(sys.modules.values()):
            if other is not module and getattr(other, name, None) is original:
                if (getattr(other, "__name__", "") or "").startswith("service."):
                    setattr(other, name, timed)
                    originals.append((other, name, original))
    try:
        for _ in range(pairs):
            pair()
    finally:
        for module, name, original in originals:
            setattr(module, name, original)
    return {key: 1000 * spent[key] / pairs for key in TIMED if key in spent}


def _profile(pair: Callable[[], None], pairs: int) -> None:
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(pairs):
        pair()
    profiler.disable()
    stats = pstats.Stats(profiler)
    by_library: Counter[str] = Counter()
    for (filename, _line, function), row in stats.stats.items():  # type: ignore[attr-defined]
        by_library[_library(filename, function)] += row[2]
    total = sum(by_library.values())
    # The call count does not depend on the machine's load: it compares two versions of the
    # code where the CPU time of one run moves by +-15%.
    print(f"Python function calls per pair: {stats.total_calls // pairs:,}")  # type: ignore[attr-defined]
    print(f"cProfile (CPU), {pairs} claim + decision pairs, by library:")
    for library, seconds in by_library.most_common(20):
        print(f"  {100 * seconds / total:5.1f}%  {library}")


def _library(filename: str, function: str) -> str:
    if "site-packages/" in filename:
        top = filename.split("site-packages/")[1].split("/")[0]
        return "sqlalchemy" if top == "sqlalchemy" else top
    if str(ROOT) in filename:
        return "tandem (" + filename.split(str(ROOT) + "/")[1].split("/")[0] + ")"
    if filename.startswith(("~", "<")):
        return "built-ins"
    return "standard library"


if __name__ == "__main__":
    main()
