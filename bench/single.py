"""Single predict against the limit of this machine (issue #20), in one sitting.

The limit: a bare WSGI app on granian, 2 workers x 4 threads like `tandem serve`
(bench/bare_app.py, ``wsgi_app``): it parses the JSON body and commits one INSERT of it per
request. Then Tandem as production runs it (`tandem serve`: granian 2 x 4, JSON access log
on) with bench/predict.py's model (logistic regression on credit_data, automating): every
case validated, scored, routed, audit-flagged and committed. Both warmed up for 3 s, then
loaded by ``wrk -t1`` at ``--connections`` with the same 500 credit_data bodies; the CPU
time of the web processes, of PostgreSQL and of wrk is read before and after each run and
divided by the requests served.

Goal (issue #20): Tandem >= 50% of the bare rate, p99 <= 10 ms. ``--without-fast-path``
also runs Tandem with ``TANDEM_PREDICT_FAST_PATH=0`` (every request through Flask) in the
same sitting.

Usage:  .venv/bin/python bench/single.py [--duration 10] [--connections 8] [--without-fast-path]
Needs:  wrk, PostgreSQL on 127.0.0.1:5432 (database ``tandem_bench_thru_single`` is
recreated), Redis on 127.0.0.1:6379 (db 5).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bare_granian_argv, reset_database  # noqa: E402
from bench.predict import (  # noqa: E402
    TASK,
    cpu_seconds,
    free_port,
    run_wrk,
    setup,
    start_server,
    stop_server,
)

DB_NAME = "tandem_bench_thru_single"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")


def measure(
    argv: list[str],
    env: dict[str, str],
    port: int,
    path: str,
    token: str | None,
    bodies: Path,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    server = start_server(argv, env, port)
    try:
        run_wrk(port, path, bodies, token, args.connections, 3, workdir)  # warm-up
        before = cpu_seconds(server.pid)
        result = run_wrk(port, path, bodies, token, args.connections, args.duration, workdir)
        after = cpu_seconds(server.pid)
    finally:
        stop_server(server)
    served = result["rps"] * args.duration
    result["cpu_ms_per_request"] = {
        group: round(1000 * (after[group] - before[group]) / served, 3) for group in after
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--without-fast-path", action="store_true")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="tandem-bench-single-"))
    db_url = reset_database(DB_NAME)
    ctx = setup(db_url, workdir)
    bodies = workdir / "bodies.jsonl"
    bodies.write_text("\n".join(json.dumps({"input": r}) for r in ctx["inputs"][:500]) + "\n")
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": REDIS_URL,
        "SECRET_KEY": "bench",
        "PYTHONPATH": str(ROOT),
    }
    bindir = Path(sys.executable).parent
    port = free_port()
    bare_argv = bare_granian_argv("bench.bare_app:wsgi_app", port)
    bare = measure(bare_argv, env, port, "/predict", None, bodies, args, workdir)
    port = free_port()
    tandem_argv = [str(bindir / "tandem"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    predict_path = f"/api/v1/tasks/{TASK}/predict"
    tandem = measure(tandem_argv, env, port, predict_path, ctx["token"], bodies, args, workdir)
    runs = [("limit: bare WSGI + INSERT (granian)", bare), ("Tandem (tandem serve)", tandem)]
    if args.without_fast_path:
        port = free_port()
        tandem_argv[-1] = str(port)
        flask_only = measure(
            tandem_argv,
            {**env, "TANDEM_PREDICT_FAST_PATH": "0"},
            port,
            predict_path,
            ctx["token"],
            bodies,
            args,
            workdir,
        )
        runs.append(("Tandem, fast path off", flask_only))
    load = os.getloadavg()
    print(
        f"\nmachine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}; wrk -t1 -c{args.connections} -d{args.duration}s"
    )
    print(f"{'server':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}  CPU ms/request")
    for name, r in runs:
        cpu = ", ".join(f"{k} {v:.3f}" for k, v in r["cpu_ms_per_request"].items())
        print(
            f"{name:<34}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
            f"{r['non_2xx']:>9}  {cpu}"
        )
    print(
        f"Tandem / limit: {tandem['rps'] / bare['rps']:.2f} of the bare rate "
        f"(goal >= 0.50), p99 {tandem['p99_ms']:.1f} ms (goal <= 10)"
    )
    (workdir / "results.json").write_text(json.dumps(dict(runs), indent=2))
    print(f"raw results: {workdir / 'results.json'}")


if __name__ == "__main__":
    main()
