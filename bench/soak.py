"""Mixed-load soak test against the web app (`tandem serve`) + PostgreSQL + Redis + a worker.

Starts `tandem serve` (``--web-workers``) and one ``tandem worker`` against DATABASE_URL/REDIS_URL
(a DEDICATED database: it creates a task, users and tokens), then for ``--duration`` seconds
runs concurrently: applications predicting (single and batches of 50), reviewers claiming
and deciding through the review API (browser sessions with CSRF, as the UI does), a retrain
requested every ``--retrain-every`` labels, and an export snapshot every 60 s. Reports
throughput, p50/p99 per endpoint, errors by status and the RSS of every process over time.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/tandem_soak \\
      REDIS_URL=redis://127.0.0.1:6379/9 SECRET_KEY=soak \\
      .venv/bin/python bench/soak.py --duration 600
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TASK = {
    "name": "soak",
    "labels": ["good", "bad"],
    "fields": [
        {"name": "review", "type": "text"},
        {"name": "state", "type": "category"},
        {"name": "amount", "type": "number", "required": False},
    ],
    "policy": {"min_labels": 100, "retrain_every": 10_000},
}
PASSWORD = "soak-password-123"


def item(rng: random.Random) -> dict[str, Any]:
    good = rng.random() < 0.5
    return {
        "review": rng.choice(
            ["paid on time", "stable job"] if good else ["defaulted", "missed payments"]
        ),
        "state": rng.choice(["CA", "OR"] if good else ["NY", "NJ"]),
        "amount": rng.uniform(100, 1000) if good else rng.uniform(5000, 9000),
    }


class Stats:
    def __init__(self) -> None:
        self.lat: dict[str, list[float]] = defaultdict(list)
        self.status: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        self.errors: list[str] = []

    def add(self, name: str, started: float, resp: httpx.Response | None, err: str = "") -> None:
        self.lat[name].append(time.perf_counter() - started)
        if resp is not None:
            self.status[name][resp.status_code] += 1
        else:
            self.status[name][0] += 1
            self.errors.append(f"{name}: {err}"[:200])


async def timed(stats: Stats, name: str, coro: Any) -> httpx.Response | None:
    t0 = time.perf_counter()
    try:
        resp = await coro
    except httpx.HTTPError as exc:
        stats.add(name, t0, None, repr(exc))
        return None
    stats.add(name, t0, resp)
    return resp


async def app_client(base: str, token: str, stats: Stats, stop: float, seed: int) -> None:
    rng = random.Random(seed)
    h = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=h, timeout=30) as c:
        while time.monotonic() < stop:
            if rng.random() < 0.1:
                body = {"items": [{"input": item(rng)} for _ in range(50)]}
                await timed(
                    stats, "predict_batch50", c.post("/api/v1/tasks/soak/predict/batch", json=body)
                )
            else:
                await timed(
                    stats,
                    "predict",
                    c.post("/api/v1/tasks/soak/predict", json={"input": item(rng)}),
                )


async def reviewer(
    base: str,
    email: str,
    admin: str,
    stats: Stats,
    stop: float,
    retrain_every: int,
    labels: list[int],
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as c:
        page = await c.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        r = await c.post("/login", data={"email": email, "password": PASSWORD, "csrf_token": csrf})
        assert r.status_code == 302, r.text
        page = await c.get("/")
        m = re.search(r'name="csrf-token" content="([^"]+)"', page.text) or re.search(
            r'name="csrf_token" value="([^"]+)"', page.text
        )
        h = {"X-CSRFToken": m.group(1) if m else csrf}
        while time.monotonic() < stop:
            resp = await timed(stats, "claim", c.post("/api/v1/tasks/soak/queue/claim", headers=h))
            if resp is None or resp.status_code != 200:
                await asyncio.sleep(0.2)
                continue
            case = resp.json()
            # The truth of the synthetic data (state decides), so models can learn.
            state = (case.get("input") or {}).get("state")
            label = "good" if state in ("CA", "OR") else "bad"
            await timed(
                stats,
                "review",
                c.post(f"/api/v1/cases/{case['case_id']}/review", json={"label": label}, headers=h),
            )
            labels[0] += 1
            if labels[0] % retrain_every == 0:
                await timed(
                    stats,
                    "train",
                    c.post(
                        "/api/v1/tasks/soak/models/train",
                        headers={"Authorization": f"Bearer {admin}"},
                    ),
                )


async def exporter(base: str, analyst: str, stats: Stats, stop: float) -> None:
    h = {"Authorization": f"Bearer {analyst}"}
    async with httpx.AsyncClient(base_url=base, headers=h, timeout=120) as c:
        while time.monotonic() < stop:
            await timed(
                stats,
                "export_snapshot",
                c.post("/api/v1/tasks/soak/exports", json={"format": "csv"}),
            )
            await asyncio.sleep(60)


async def memory(procs: dict[str, int], series: list[dict[str, Any]], stop: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() < stop:
        row: dict[str, Any] = {"t": round(time.monotonic() - t0)}
        for name, pid in procs.items():
            try:
                p = psutil.Process(pid)
                row[name] = round(p.memory_info().rss / 2**20, 1)
                for i, child in enumerate(p.children()):
                    row[f"{name}.{i}"] = round(child.memory_info().rss / 2**20, 1)
            except psutil.Error:
                row[name] = None
        series.append(row)
        await asyncio.sleep(15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def setup(env: dict[str, str], reviewers: int) -> dict[str, Any]:
    subprocess.run([str(BIN / "tandem"), "db", "upgrade"], env=env, check=True, cwd=ROOT)
    code = f"""
import json, secrets
from sqlalchemy.orm import Session
from service.config import Settings
from service.db import make_engine
from service.services.accounts import create_token, create_user
from service.services.audit import SYSTEM
eng = make_engine(Settings.from_env().database_url)
out = {{}}
with Session(eng) as s:
    for role in ("app", "admin", "analyst"):
        out[role] = create_token(s, role=role, name="soak-" + role + secrets.token_hex(3),
                                 task_scope=None, actor=SYSTEM).token
    out["reviewers"] = []
    for i in range({reviewers}):
        email = f"soak-{{secrets.token_hex(4)}}@example.com"
        create_user(s, email=email, password={PASSWORD!r}, role="reviewer", task_scope=None,
                    actor=SYSTEM)
        out["reviewers"].append(email)
    s.commit()
print(json.dumps(out))
"""
    out = subprocess.run(
        [str(BIN / "python"), "-c", code],
        env=env,
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else 0.0


async def main(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(
        os.environ, TANDEM_INSECURE_COOKIES="1", TANDEM_LOG_FORMAT="json", PYTHONPATH=str(ROOT)
    )
    for key in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY"):
        assert env.get(key), f"{key} must be set (use a dedicated database)"
    creds = setup(env, args.reviewers)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logs = open(args.log, "w")
    web = subprocess.Popen(
        [
            str(BIN / "tandem"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.web_workers),
        ],
        env=env,
        cwd=ROOT,
        stdout=logs,
        stderr=logs,
        start_new_session=True,
    )
    worker = subprocess.Popen(
        [str(BIN / "tandem"), "worker"],
        env=env,
        cwd=ROOT,
        stdout=logs,
        stderr=logs,
        start_new_session=True,
    )
    try:
        for _ in range(120):
            try:
                if httpx.get(base + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
        r = httpx.post(
            base + "/api/v1/tasks", json=TASK, headers={"Authorization": f"Bearer {creds['admin']}"}
        )
        assert r.status_code in (201, 409), r.text
        stats = Stats()
        stop = time.monotonic() + args.duration
        labels = [0]
        series: list[dict[str, Any]] = []
        t0 = time.monotonic()
        await asyncio.gather(
            *(app_client(base, creds["app"], stats, stop, i) for i in range(args.apps)),
            *(
                reviewer(base, e, creds["admin"], stats, stop, args.retrain_every, labels)
                for e in creds["reviewers"]
            ),
            exporter(base, creds["analyst"], stats, stop),
            memory({"web": web.pid, "worker": worker.pid}, series, stop),
        )
        elapsed = time.monotonic() - t0
    finally:
        for proc in (web, worker):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
    report = {
        "duration_s": round(elapsed),
        "labels": labels[0],
        "endpoints": {
            name: {
                "n": len(v),
                "rps": round(len(v) / elapsed, 1),
                "p50_ms": round(pct(v, 0.5), 1),
                "p99_ms": round(pct(v, 0.99), 1),
                "mean_ms": round(statistics.fmean(v) * 1000, 1),
                "status": dict(stats.status[name]),
            }
            for name, v in sorted(stats.lat.items())
        },
        "server_errors_5xx": sum(
            n for s in stats.status.values() for c, n in s.items() if c >= 500
        ),
        "transport_errors": stats.errors[:20],
        "rss_mb": series,
    }
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=600)
    parser.add_argument("--apps", type=int, default=4, help="concurrent application clients")
    parser.add_argument("--reviewers", type=int, default=3)
    parser.add_argument("--web-workers", type=int, default=2)
    parser.add_argument("--retrain-every", type=int, default=300)
    parser.add_argument("--log", default="/tmp/tandem-soak.log")
    parser.add_argument("--out", default=None, help="write the JSON report here too")
    result = asyncio.run(main(parser.parse_args()))
    text = json.dumps(result, indent=1)
    print(text)
    if parser.parse_args().out:
        Path(parser.parse_args().out).write_text(text)
