"""Web process memory (issue #20): RSS of a `tandem serve` worker after start and after
serving predicts, against the limit measured in the same run: a bare granian + Flask app
importing only what serving needs (bench/bare_app.py, ``flask_app``).

Sets up ``tandem_bench_thru_memory`` (PostgreSQL) with bench/predict.py's set-up (logistic
regression on credit_data, activated as the training job stores it), then, one after the
other, each server with 2 worker processes (granian, production defaults):
  * after start: RSS of every worker once ``/healthz`` answers;
  * after serving: RSS again after ``--singles`` single predicts and ``--batches`` batches of
    100 (the bare app gets the same number of POSTs, each one INSERT).
``--compare-with DIR`` also runs `tandem serve` from another checkout (e.g. /work/main, the
code before this change) against the same database, for a before/after in one sitting.

Usage:  .venv/bin/python bench/memory.py [--singles 400] [--batches 20] [--compare-with DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import bare_granian_argv, reset_database  # noqa: E402
from bench.predict import TASK, free_port, setup, start_server, stop_server  # noqa: E402

DB_NAME = "tandem_bench_thru_memory"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")


def workers_rss(server_pid: int) -> list[dict[str, float]]:
    """RSS and USS (MB) of each worker: the server's children that run the app."""
    out = []
    for child in psutil.Process(server_pid).children(recursive=True):
        try:
            full = child.memory_full_info()
        except psutil.Error:
            continue
        out.append({"pid": child.pid, "rss": full.rss / 1e6, "uss": full.uss / 1e6})
    # granian's workers are the processes that hold the app: the largest ones.
    return sorted(out, key=lambda r: -r["rss"])


def serve_predicts(
    port: int,
    path: str,
    token: str | None,
    inputs: list[dict[str, Any]],
    singles: int,
    batches: int,
) -> int:
    """Requests round-robin over 4 kept-alive connections, so both workers serve some."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    clients = [httpx.Client(timeout=60, headers=headers) for _ in range(4)]
    url = f"http://127.0.0.1:{port}{path}"
    ok = 0
    try:
        for i in range(singles):
            resp = clients[i % 4].post(url, json={"input": inputs[i % 500]})
            ok += resp.status_code < 300
        for b in range(batches):
            if token:  # Tandem: batches of 100
                items = [{"input": inputs[(b * 100 + j) % len(inputs)]} for j in range(100)]
                resp = clients[b % 4].post(f"{url}/batch", json={"items": items})
            else:  # the bare app: the same number of POSTs
                resp = clients[b % 4].post(url, json={"input": inputs[b]})
            ok += resp.status_code < 300
    finally:
        for client in clients:
            client.close()
    return ok


def measure(
    name: str,
    argv: list[str],
    env: dict[str, str],
    port: int,
    path: str,
    token: str | None,
    inputs: list[dict[str, Any]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    server = start_server(argv, env, port)
    try:
        time.sleep(1.0)  # every worker up, not just the first to answer
        start = workers_rss(server.pid)[:2]
        ok = serve_predicts(port, path, token, inputs, args.singles, args.batches)
        served = workers_rss(server.pid)[:2]
    finally:
        stop_server(server)
    return {"name": name, "start": start, "served": served, "ok_requests": ok}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--singles", type=int, default=400)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--compare-with", default=None, help="another checkout to run too")
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="tandem-bench-memory-"))
    db_url = reset_database(DB_NAME)
    ctx = setup(db_url, workdir)
    base_env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": REDIS_URL,
        "SECRET_KEY": "bench",
        "TANDEM_ACCESS_LOG": "0",
    }
    bindir = Path(sys.executable).parent
    results = []

    port = free_port()
    bare_argv = bare_granian_argv("bench.bare_app:flask_app", port)
    bare_env = {**base_env, "BARE_FLASK": "1", "PYTHONPATH": str(ROOT)}
    results.append(
        measure(
            "limit: bare granian + Flask",
            bare_argv,
            bare_env,
            port,
            "/predict",
            None,
            ctx["inputs"],
            args,
        )
    )
    checkouts = [("Tandem (this checkout)", ROOT)]
    if args.compare_with:
        checkouts.append((f"Tandem ({args.compare_with})", Path(args.compare_with).resolve()))
    for name, code in checkouts:
        port = free_port()
        argv = [
            str(bindir / "tandem"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ]
        env = {**base_env, "PYTHONPATH": str(code)}
        results.append(
            measure(
                name,
                argv,
                env,
                port,
                f"/api/v1/tasks/{TASK}/predict",
                ctx["token"],
                ctx["inputs"],
                args,
            )
        )

    load = os.getloadavg()
    print(
        f"\nmachine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}; {args.singles} single predicts + {args.batches} batches of 100"
    )
    print(f"{'server':<34}{'RSS at start (MB)':>20}{'RSS after serving':>20}{'USS after':>12}")
    limit = results[0]
    for r in results:
        start = " / ".join(f"{w['rss']:.0f}" for w in r["start"])
        served = " / ".join(f"{w['rss']:.0f}" for w in r["served"])
        uss = " / ".join(f"{w['uss']:.0f}" for w in r["served"])
        print(f"{r['name']:<34}{start:>20}{served:>20}{uss:>12}")
    for r in results[1:]:
        ratio = max(w["rss"] for w in r["served"]) / max(w["rss"] for w in limit["served"])
        print(
            f"{r['name']}: largest worker after serving = {ratio:.2f}x the limit's "
            f"({max(w['rss'] for w in r['served']):.0f} MB; goal <= 200 MB)"
        )
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"raw results: {workdir / 'results.json'}")


if __name__ == "__main__":
    main()
