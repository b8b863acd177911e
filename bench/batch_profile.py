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
REDIS_URL = "redis://127.0.0.1:6379/5"

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
        with _copy_alone(db_url) as copy:
            # Alternated, batch by batch: both see the same machine and the same table.
            runs: dict[str, list[float]] = {"tandem": [], "copy": []}
            for n in range(args.batches + 2):
                tandem, alone = send(), copy()
                if n >= 2:  # warm-up
                    runs["tandem"].append(tandem)
                    runs["copy"].append(alone)
        end_to_end = statistics.median(runs["tandem"])
        copy_alone = statistics.median(runs["copy"])

    total = statistics.median(totals)
    print(f"\n1,000-case batches, median of {args.batches} (in-process, PostgreSQL):")
    print(f"{'phase':<16}{'ms':>8}{'share':>8}")
    for phase in PHASES:
        ms = 1000 * statistics.median(per_batch[phase])
        print(f"{phase:<16}{ms:>8.1f}{ms / (1000 * total):>8.0%}")
    other = total - sum(statistics.median(per_batch[phase]) for phase in PHASES)
    print(f"{'other':<16}{1000 * other:>8.1f}{other / total:>8.0%}  (authorize, case views)")
    print(f"{'total':<16}{1000 * total:>8.1f}  -> {1000 / total:,.0f} cases/s on one core")
    load = os.getloadavg()
    print(f"\nsame run, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}:")
    print(f"{'end to end (Flask app, no socket)':<40}{1000 * end_to_end:>8.1f} ms")
    print(f"{'limit: PostgreSQL COPY of the same rows':<40}{1000 * copy_alone:>8.1f} ms")
    print(f"{'ratio end to end / COPY alone':<40}{end_to_end / copy_alone:>8.2f}  (goal <= 1.5)")


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
        conn.commit()
        lines = bytes(data).rstrip(b"\n").split(b"\n")
        assert len(lines) == 1000
        tails = [line[line.index(b"\t") :] for line in lines]

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


if __name__ == "__main__":
    main()
