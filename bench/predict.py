"""Predict hot-path benchmark (issues #2 and #8).

Runs, in one sitting, on PostgreSQL:
  * the peer: a minimal Flask app calling the same Pipeline per request (gunicorn, 2 sync
    workers), persisting nothing;
  * Tandem: `tandem serve` as in production (granian, 2 processes × 4 request threads) with
    an active logistic-regression model on credit_data (every case validated, routed,
    audit-flagged and committed);
both loaded with `wrk` at 8 and 32 connections; then batch throughput (1,000 cases per
request) and the raw in-process `predict_proba` rate of the same Pipeline.

Usage:  .venv/bin/python bench/predict.py [--duration 20] [--connections 8,32]
Needs:  wrk (apt-get install wrk), PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = "tandem_bench_predict"
PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
TASK = "credit"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reset_database() -> str:
    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
    admin.dispose()
    return f"{PG}/{DB_NAME}"


def setup(db_url: str, workdir: Path) -> dict[str, Any]:
    """Migrate, create the task, train LR on credit_data, activate it, make tokens."""
    from bench.common import activate_model
    from service import migrate
    from service.config import Settings
    from service.ml.artifacts import dump_model
    from service.ml.pipeline import train_model
    from service.services import accounts, tasks
    from service.services.audit import SYSTEM
    from service.uow import unit_of_work
    from tandem.app import create_app
    from tandem.demo import CREDIT_FIELDS, read_rows

    settings = Settings(
        database_url=db_url, redis_url=REDIS_URL, home=workdir, secret_key="bench", embedded=False
    )
    app = create_app(settings)
    migrate.upgrade(app.extensions["tandem_engine"])
    rows = read_rows("credit_data.csv", "Status", CREDIT_FIELDS)
    inputs = [r for r, _ in rows]
    labels = [y for _, y in rows]
    trained = train_model(
        inputs, labels, CREDIT_FIELDS, ["good", "bad"], families=("logistic_regression",)
    )
    artefact = dump_model(trained.pipeline)
    (workdir / "model.skops").write_bytes(artefact)
    with app.app_context(), unit_of_work() as session:
        from service.schemas.common import load
        from service.schemas.tasks import TaskCreateSchema

        task = tasks.create_task(
            session,
            load(
                TaskCreateSchema(),
                {
                    "name": TASK,
                    "labels": ["good", "bad"],
                    "fields": CREDIT_FIELDS,
                    "policy": {"target_error": 0.05},
                },
            ),
            SYSTEM,
        )
        activate_model(session, task, trained, artefact, inputs)
        token = accounts.create_token(
            session, role="app", name="bench", task_scope=None, actor=SYSTEM
        ).token
    return {"token": token, "inputs": inputs, "pipeline": trained.pipeline}


def start_server(argv: list[str], env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        argv,
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError("server did not start: " + " ".join(argv))


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


LUA = """
local bodies = {}
local i = 0
for line in io.lines("%(bodies)s") do bodies[#bodies + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(auth)s
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, "%(path)s", nil, bodies[i])
end
"""


def run_wrk(
    port: int,
    path: str,
    bodies: Path,
    token: str | None,
    connections: int,
    duration: int,
    workdir: Path,
) -> dict[str, float]:
    script = workdir / f"wrk-{port}-{connections}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {token}"' if token else ""
    script.write_text(LUA % {"bodies": bodies, "auth": auth, "path": path})
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU time used so far by the web server's process tree, by PostgreSQL's processes, and
    by finished child processes of this script (wrk), to split a request's cost."""
    import resource

    import psutil

    def cpu(processes: list[psutil.Process]) -> float:
        total = 0.0
        for p in processes:
            try:
                t = p.cpu_times()
            except psutil.Error:  # exited between listing and reading
                continue
            total += t.user + t.system
        return total

    server = psutil.Process(server_pid)
    postgres = [
        p for p in psutil.process_iter(["name"]) if (p.info["name"] or "").startswith("postgres")
    ]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "web": cpu([server, *server.children(recursive=True)]),
        "postgres": cpu(postgres),
        "wrk": children.ru_utime + children.ru_stime,
    }


def batch_throughput(
    port: int, token: str, inputs: list[dict[str, Any]], seconds: float, clients: int
) -> float:
    """1,000-case batches sent back to back by `clients` concurrent clients."""
    from concurrent.futures import ThreadPoolExecutor

    items = [{"input": inputs[i % len(inputs)]} for i in range(1000)]
    body = json.dumps({"items": items})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    start = time.perf_counter()

    def one_client() -> int:
        done = 0
        with httpx.Client(timeout=60) as client:
            while time.perf_counter() - start < seconds:
                resp = client.post(
                    f"http://127.0.0.1:{port}/api/v1/tasks/{TASK}/predict/batch",
                    content=body,
                    headers=headers,
                )
                resp.raise_for_status()
                done += 1000
        return done

    with ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(lambda _: one_client(), range(clients)))
    return total / (time.perf_counter() - start)


def raw_model_rate(pipeline: Any, inputs: list[dict[str, Any]]) -> float:
    from service.ml.frame import rows_to_frame
    from tandem.demo import CREDIT_FIELDS

    frame = rows_to_frame(inputs[:1000], CREDIT_FIELDS)
    runs = []
    for _ in range(20):
        t = time.perf_counter()
        pipeline.predict_proba(frame)
        runs.append(time.perf_counter() - t)
    return 1000 / statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--connections", default="8,32")
    parser.add_argument("--batch-seconds", type=float, default=15)
    parser.add_argument(
        "--batch-clients", type=int, default=2, help="concurrent clients sending 1,000-case batches"
    )
    parser.add_argument(
        "--tandem-workers",
        type=int,
        default=None,
        help="web worker processes for Tandem (default: production's, 2)",
    )
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    connections = [int(c) for c in args.connections.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="tandem-bench-"))
    db_url = reset_database()
    ctx = setup(db_url, workdir)
    bodies = workdir / "bodies.jsonl"
    bodies.write_text("\n".join(json.dumps({"input": r}) for r in ctx["inputs"][:500]) + "\n")

    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "REDIS_URL": REDIS_URL,
        "SECRET_KEY": "bench",
        "PEER_MODEL": str(workdir / "model.skops"),
        "PYTHONPATH": str(ROOT),
    }
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    results: dict[str, Any] = {}

    peer_port = free_port()
    peer = start_server(
        [gunicorn, "-w", "2", "-b", f"127.0.0.1:{peer_port}", "bench.peer_app:app"], env, peer_port
    )
    try:
        run_wrk(peer_port, "/predict", bodies, None, 8, 3, workdir)
        for c in connections:
            results[f"peer_c{c}"] = run_wrk(
                peer_port, "/predict", bodies, None, c, args.duration, workdir
            )
    finally:
        stop_server(peer)

    port = free_port()
    # Tandem as production runs it: `tandem serve` (granian, production defaults, JSON access
    # log on; it goes to /dev/null here but is formatted and written all the same).
    tandem_argv = [
        str(Path(sys.executable).parent / "tandem"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if args.tandem_workers:
        tandem_argv += ["--workers", str(args.tandem_workers)]
    tandem = start_server(tandem_argv, env, port)
    # Both servers get the same warm-up (first request per process loads the model).
    run_wrk(port, f"/api/v1/tasks/{TASK}/predict", bodies, ctx["token"], 8, 3, workdir)
    try:
        for c in connections:
            before = cpu_seconds(tandem.pid)
            results[f"tandem_c{c}"] = run_wrk(
                port,
                f"/api/v1/tasks/{TASK}/predict",
                bodies,
                ctx["token"],
                c,
                args.duration,
                workdir,
            )
            after = cpu_seconds(tandem.pid)
            served = results[f"tandem_c{c}"]["rps"] * args.duration
            results[f"tandem_c{c}"]["cpu_ms_per_request"] = {
                group: round(1000 * (after[group] - before[group]) / served, 3) for group in after
            }
        results["tandem_batch_cases_per_s"] = batch_throughput(
            port, ctx["token"], ctx["inputs"], args.batch_seconds, args.batch_clients
        )
    finally:
        stop_server(tandem)
    results["raw_model_cases_per_s"] = raw_model_rate(ctx["pipeline"], ctx["inputs"])
    results["batch_cost_ratio"] = (
        results["raw_model_cases_per_s"] / results["tandem_batch_cases_per_s"]
    )
    engine = create_engine(db_url)
    with engine.connect() as conn:
        results["cases_persisted"] = conn.execute(text("SELECT count(*) FROM cases")).scalar()
    engine.dispose()

    print(f"\nmachine: {os.cpu_count()} cores; wrk -t1 -d{args.duration}s")
    print(f"{'server':<10}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for c in connections:
        for name in ("peer", "tandem"):
            r = results[f"{name}_c{c}"]
            print(
                f"{name:<10}{c:>6}{r['rps']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
                f"{r['non_2xx']:>9}"
            )
        ratio = results[f"tandem_c{c}"]["rps"] / results[f"peer_c{c}"]["rps"]
        print(f"{'ratio':<10}{c:>6}{ratio:>10.2f}  (Tandem / peer)")
        cpu = results[f"tandem_c{c}"]["cpu_ms_per_request"]
        print(
            f"{'':<16}Tandem CPU per request: "
            + ", ".join(f"{k} {v:.3f} ms" for k, v in cpu.items())
        )
    print(f"batch (1,000 per request): {results['tandem_batch_cases_per_s']:,.0f} cases/s")
    print(
        f"raw Pipeline.predict_proba: {results['raw_model_cases_per_s']:,.0f} cases/s "
        f"-> Tandem batch costs {results['batch_cost_ratio']:.2f}x the raw model per case"
    )
    print(f"cases persisted: {results['cases_persisted']:,}")
    (workdir / "results.json").write_text(json.dumps(results, indent=2))
    print(f"raw results: {workdir / 'results.json'}")


if __name__ == "__main__":
    main()
