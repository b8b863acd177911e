"""Where a 1,000-case `POST /predict/batch` spends its time (issue #8), in-process.

Runs the service path the endpoint runs (``predict_service.predict_batch`` in one unit of
work, then the JSON response) on PostgreSQL and times each phase with wrappers around the
service's own functions: validation of every item, scoring, building the rows, PostgreSQL
COPY, commit, and serialising the response. Prints the median per phase over ``--batches``
batches, and what the whole costs per case.

Usage:  .venv/bin/python bench/batch_profile.py [--batches 30]
Needs:  PostgreSQL on 127.0.0.1:5432 (database ``tandem_bench_predict`` is recreated).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.predict import REDIS_URL, TASK, reset_database, setup  # noqa: E402

PHASES = ("validate", "score", "build rows", "COPY", "commit", "response JSON")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=30)
    args = parser.parse_args()

    db_url = reset_database()
    ctx = setup(db_url, Path(tempfile.mkdtemp(prefix="tandem-bench-")))

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
    svc._check_item = timed("validate", svc._check_item)
    svc._score = timed("score", svc._score)
    svc._build_rows = timed("build rows", svc._build_rows)
    svc._insert = timed("COPY", svc._insert)

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
            json.dumps({"results": results})
            spent["response JSON"] = time.perf_counter() - t
            total = time.perf_counter() - t0
            spent["build rows"] -= spent["score"]
            if n >= 3:  # warm-up: model load, prepared statements
                totals.append(total)
                for phase in PHASES:
                    per_batch[phase].append(spent[phase])

    total = statistics.median(totals)
    print(f"\n1,000-case batches, median of {args.batches} (in-process, PostgreSQL):")
    print(f"{'phase':<16}{'ms':>8}{'share':>8}")
    for phase in PHASES:
        ms = 1000 * statistics.median(per_batch[phase])
        print(f"{phase:<16}{ms:>8.1f}{ms / (1000 * total):>8.0%}")
    other = total - sum(statistics.median(per_batch[phase]) for phase in PHASES)
    print(f"{'other':<16}{1000 * other:>8.1f}{other / total:>8.0%}  (authorize, case views)")
    print(f"{'total':<16}{1000 * total:>8.1f}  -> {1000 / total:,.0f} cases/s on one core")


if __name__ == "__main__":
    main()
