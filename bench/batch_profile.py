"""Where a 1,000-case `POST /predict/batch` spends its time (issues #8, #20), in-process,
and how it compares with PostgreSQL's own COPY of the same rows, measured in the same run.

1. Phases: the service path the endpoint runs (``predict_service.predict_batch`` in one
   unit of work, then the JSON response) with each phase timed by wrappers around the
   service's own functions: validation of every item, scoring, building the rows, PostgreSQL
   COPY, commit, and serialising the response.
2. End to end: the same batch as a request through the Flask app (test client: routing,
   token, body parsing, the service, commit, the response), no socket.
3. The limit: the last 1,000 cases the app stored, read back with ``COPY ... TO STDOUT``
   and written again (fresh ids) with ``COPY cases FROM STDIN`` + commit: what PostgreSQL
   alone needs to store the same rows, with every index and foreign key.
2 and 3 alternate, batch by batch, so both see the same machine and the same table. Prints
the medians over ``--batches`` batches and the ratio end to end / COPY alone (issue #20's
goal: <= 1.5).
4. Where the limit's time goes: the same COPY into a copy of ``cases`` with every index but
   no foreign keys, whole and streamed in ten chunks with Python's own per-chunk work (from
   1.) between them, and how long each COPY still runs after its last row was sent.
   PostgreSQL checks foreign keys row by row in triggers it runs only once the statement's
   last row is in, so that part of the limit can never overlap with the request's Python
   work (bench/README.md, "Batch predict").

Usage:  .venv/bin/python bench/batch_profile.py [--batches 30]
Needs:  PostgreSQL on 127.0.0.1:5432 (database ``tandem_bench_thru_batch`` is recreated).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import reset_database  # noqa: E402
from bench.predict import TASK, setup  # noqa: E402

DB_NAME = "tandem_bench_thru_batch"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")

PHASES = ("validate", "score", "build rows", "COPY", "commit", "response JSON")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()

    db_url = reset_database(DB_NAME)
    ctx = setup(db_url, Path(tempfile.mkdtemp(prefix="tandem-bench-")))

    from service.api.predict import json_response
    from service.config import Settings
    from service.services import predict as svc
    from service.services.accounts import authenticate_token
    from service.uow import unit_of_work
    from tandem.app import create_app

    settings = Settings(
        database_url=db_url,
        redis_url=REDIS_URL,
        home=Path(tempfile.mkdtemp()),
        secret_key="bench",
        embedded=False,
    )
    app = create_app(settings)
    gc.freeze()  # as `tandem serve` does before it forks its workers (tandem/processes.py)
    spent: dict[str, float] = defaultdict(float)

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - t

        return wrapper

    # score runs inside build rows: subtract it below.
    svc.check_item = timed("validate", svc.check_item)
    svc._score = timed("score", svc._score)
    svc._build_rows = timed("build rows", svc._build_rows)
    svc._write_rows = timed("COPY", svc._write_rows)

    items = [svc.PredictRequest(input=ctx["inputs"][i % len(ctx["inputs"])]) for i in range(1000)]
    per_batch: dict[str, list[float]] = defaultdict(list)
    totals: list[float] = []
    with app.app_context():
        with unit_of_work() as session:
            actor = authenticate_token(session, ctx["token"])
        assert actor is not None
        for n in range(args.batches + 3):
            spent.clear()
            t0 = time.perf_counter()
            with unit_of_work() as session:
                results = svc.predict_batch(session, TASK, items, actor)
                t_commit = time.perf_counter()
            spent["commit"] = time.perf_counter() - t_commit
            t = time.perf_counter()
            json_response({"results": results})
            spent["response JSON"] = time.perf_counter() - t
            total = time.perf_counter() - t0
            spent["build rows"] -= spent["score"]
            if n >= 3:  # warm-up: model load, prepared statements
                totals.append(total)
                for phase in PHASES:
                    per_batch[phase].append(spent[phase])

        send = _end_to_end(app, ctx["token"], items)
        # When the request sent its last row, and when its COPY had ended.
        marks: dict[str, float] = {}
        write_rows, streamed = svc._write_rows, svc._predict_streamed

        def marked_write(*a: Any, **kw: Any) -> Any:
            write_rows(*a, **kw)
            marks["last row sent"] = time.perf_counter()

        def marked_stream(*a: Any, **kw: Any) -> Any:
            try:
                return streamed(*a, **kw)
            finally:
                marks["COPY ended"] = time.perf_counter()

        svc._write_rows, svc._predict_streamed = marked_write, marked_stream
        with _copy_alone(db_url) as copy:
            # Alternated, batch by batch: both see the same machine and the same table.
            runs: dict[str, list[float]] = {"tandem": [], "copy": [], "tandem tail": []}
            for n in range(args.batches + 2):
                tandem, alone = send(), copy()
                if n >= 2:  # warm-up
                    runs["tandem"].append(tandem)
                    runs["copy"].append(alone)
                    runs["tandem tail"].append(marks["COPY ended"] - marks["last row sent"])
        end_to_end = statistics.median(runs["tandem"])
        copy_alone = statistics.median(runs["copy"])
        # Python's own work per chunk of the stream: validation, scoring, rows, COPY text.
        python_per_batch = statistics.median(
            sum(spent) for spent in zip(*(per_batch[p] for p in PHASES[:4]), strict=True)
        )
        parts = _limit_parts(db_url, chunks=10, python_per_chunk=python_per_batch / 10)

    total = statistics.median(totals)
    print(f"\n1,000-case batches, median of {args.batches} (in-process, PostgreSQL):")
    print(f"{'phase':<16}{'ms':>8}{'share':>8}")
    for phase in PHASES:
        ms = 1000 * statistics.median(per_batch[phase])
        print(f"{phase:<16}{ms:>8.1f}{ms / (1000 * total):>8.0%}")
    other = total - sum(statistics.median(per_batch[phase]) for phase in PHASES)
    print(
        f"{'other':<16}{1000 * other:>8.1f}{other / total:>8.0%}"
        "  (authorize, case views, the COPY's end: its foreign-key checks)"
    )
    print(f"{'total':<16}{1000 * total:>8.1f}  -> {1000 / total:,.0f} cases/s on one core")
    load = os.getloadavg()
    print(f"\nsame run, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}:")
    print(f"{'end to end (Flask app, no socket)':<40}{1000 * end_to_end:>8.1f} ms")
    print(f"{'limit: PostgreSQL COPY of the same rows':<40}{1000 * copy_alone:>8.1f} ms")
    print(f"{'ratio end to end / COPY alone':<40}{end_to_end / copy_alone:>8.2f}  (goal <= 1.5)")
    tail = statistics.median(runs["tandem tail"])
    print(f"{'end to end: its COPY ran on after the last row for':<52}{1000 * tail:>6.1f} ms")
    print(
        f"\nwhere the limit's time goes (same rows, medians of 10 runs of their own; a streamed"
        f" COPY spends {parts['gap'] * 1000:.1f} ms of busy Python before each of its 10 chunks,"
        " as the request's own work does):"
    )
    print(f"{'':<34}{'whole':>8}{'streamed':>10}{'after last row':>16}")
    for table in ("cases", "no foreign keys"):
        whole, total, after = parts[table]
        print(f"{table:<34}{1000 * whole:>8.1f}{1000 * total:>10.1f}{1000 * after:>16.1f}  ms")
    fk = parts["cases"][0] - parts["no foreign keys"][0]
    print(
        f"foreign-key checks: {1000 * fk:.1f} ms of the whole COPY's"
        f" {1000 * parts['cases'][0]:.1f} (these runs), run after the last row is in"
    )


def _end_to_end(app: Any, token: str, items: list[Any]) -> Callable[[], float]:
    """One 1,000-item batch request through the app, as a client sends it: its seconds."""
    client = app.test_client()
    body = json.dumps({"items": [{"input": item.input} for item in items]})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    url = f"/api/v1/tasks/{TASK}/predict/batch"

    def send() -> float:
        t = time.perf_counter()
        resp = client.post(url, data=body, headers=headers)
        elapsed = time.perf_counter() - t
        assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
        return elapsed

    return send


@contextlib.contextmanager
def _copy_alone(db_url: str) -> Iterator[Callable[[], float]]:
    """COPY + commit of 1,000 case rows the app stored, with fresh ids: its seconds."""
    import psycopg

    from service.models import new_ids

    dsn = db_url.replace("postgresql+psycopg://", "postgresql://")
    tails, quoted = _stored_lines(dsn)
    with psycopg.connect(dsn) as conn:

        def copy_once() -> float:
            ids = new_ids(len(tails))
            buf = b"".join(i.encode() + tail + b"\n" for i, tail in zip(ids, tails, strict=True))
            t = time.perf_counter()
            with (
                conn.transaction(),
                conn.cursor().copy(f"COPY cases ({quoted}) FROM STDIN") as copy,
            ):
                copy.write(buf)
            return time.perf_counter() - t

        yield copy_once


def _limit_parts(db_url: str, *, chunks: int, python_per_chunk: float) -> dict[str, Any]:
    """The limit's COPY, whole and streamed, into ``cases`` and into a copy of it without
    foreign keys (every index kept): medians of (whole, streamed, streamed after its last
    chunk) per table, in seconds. The copy is dropped afterwards."""
    import psycopg

    from service.models import new_ids

    dsn = db_url.replace("postgresql+psycopg://", "postgresql://")
    lines, quoted = _stored_lines(dsn)
    step = len(lines) // chunks

    def fresh_parts() -> list[bytes]:  # the same rows with new ids, in chunks
        ids = new_ids(len(lines))
        rows = [i.encode() + tail + b"\n" for i, tail in zip(ids, lines, strict=True)]
        return [b"".join(rows[i : i + step]) for i in range(0, len(rows), step)]

    def busy(seconds: float) -> None:  # stands for the request's Python work on a chunk
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    out: dict[str, Any] = {"gap": python_per_chunk}
    with psycopg.connect(dsn) as conn:
        conn.execute("DROP TABLE IF EXISTS cases_without_fks")
        conn.execute("CREATE TABLE cases_without_fks (LIKE cases INCLUDING ALL)")
        conn.commit()
        try:
            for label, table in (("cases", "cases"), ("no foreign keys", "cases_without_fks")):
                sql = f"COPY {table} ({quoted}) FROM STDIN"
                timings: list[tuple[float, float, float]] = []
                for n in range(12):
                    whole_buffer = b"".join(fresh_parts())
                    t = time.perf_counter()
                    with conn.transaction(), conn.cursor().copy(sql) as copy:
                        copy.write(whole_buffer)
                    whole = time.perf_counter() - t
                    parts = fresh_parts()
                    t = time.perf_counter()
                    with conn.transaction():
                        with conn.cursor().copy(sql) as copy:
                            for part in parts:
                                busy(python_per_chunk)
                                copy.write(part)
                            last = time.perf_counter()
                        ended = time.perf_counter()
                    if n >= 2:  # warm-up
                        timings.append((whole, ended - t, ended - last))
                out[label] = tuple(statistics.median(x) for x in zip(*timings, strict=True))
        finally:
            conn.rollback()
            conn.execute("DROP TABLE IF EXISTS cases_without_fks")
            conn.commit()
    return out


def _stored_lines(dsn: str) -> tuple[list[bytes], str]:
    """The last 1,000 stored cases as COPY text lines without their ids, and the quoted
    column list they follow."""
    import psycopg

    with psycopg.connect(dsn) as conn:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'cases' ORDER BY ordinal_position"
            )
        ]
        assert columns[0] == "id"
        quoted = ", ".join(f'"{c}"' for c in columns)
        data = bytearray()
        with conn.cursor().copy(
            f"COPY (SELECT {quoted} FROM cases ORDER BY created_at DESC LIMIT 1000) TO STDOUT"
        ) as copy:
            for chunk in copy:
                data += chunk
        lines = bytes(data).rstrip(b"\n").split(b"\n")
        assert len(lines) == 1000
        return [line[line.index(b"\t") :] for line in lines], quoted


if __name__ == "__main__":
    main()
