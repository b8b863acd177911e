"""Embedded mode: `tandem serve` with no configuration runs SQLite, a real embedded Redis and
one RQ worker beside the web server. Driven as a real subprocess over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from rq import Worker

from tests.helpers import redis_servers_under


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def embedded_env(home: Path) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY")
    }
    env["TANDEM_HOME"] = str(home)
    env["TANDEM_INSECURE_COOKIES"] = "1"
    return env


def start(home: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tandem.cli", "serve", "--port", str(port)],
        env=embedded_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"tandem serve exited early: {out}")
        try:
            resp = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            last = resp.json()
            if resp.status_code == 200:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.5)
    raise AssertionError(f"not ready: {last}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli", *args],
        env=embedded_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_two_embedded_instances_serve_predict_and_run_a_worker(tmp_path: Path):
    homes = [tmp_path / "a", tmp_path / "b"]
    ports = [free_port(), free_port()]
    procs = [start(h, p) for h, p in zip(homes, ports, strict=True)]
    try:
        for port, proc in zip(ports, procs, strict=True):
            ready = wait_ready(port, proc)
            assert ready["mode"] == "embedded"
            assert ready["checks"] == {"database": "ok", "redis": "ok"}
        # state lives under each TANDEM_HOME: nothing is shared between the two instances
        for home in homes:
            assert (home / "tandem.db").exists()
            assert (home / "redis.url").exists()
        urls = {(h / "redis.url").read_text() for h in homes}
        assert len(urls) == 2

        home, port = homes[0], ports[0]
        admin = cli(home, "token", "create", "--role", "admin").stdout.strip()
        app_token = cli(home, "token", "create", "--role", "app").stdout.strip()
        assert admin.startswith("tdm_") and app_token.startswith("tdm_")
        base = f"http://127.0.0.1:{port}/api/v1"
        created = httpx.post(
            f"{base}/tasks",
            json={
                "name": "emb",
                "labels": ["yes", "no"],
                "fields": [{"name": "text", "type": "text"}],
            },
            headers={"Authorization": f"Bearer {admin}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        answer = httpx.post(
            f"{base}/tasks/emb/predict",
            json={"input": {"text": "hello"}},
            headers={"Authorization": f"Bearer {app_token}"},
            timeout=10,
        )
        assert answer.status_code == 202
        assert answer.json()["reason"] == "cold_start"

        # the worker beside the web server is registered with the embedded Redis
        redis = Redis.from_url((home / "redis.url").read_text())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not Worker.all(connection=redis):
            time.sleep(0.5)
        workers = Worker.all(connection=redis)
        assert workers, "no RQ worker registered in embedded mode"
        assert {q.name for q in workers[0].queues} >= {
            "training",
            "webhooks",
            "exports",
            "maintenance",
        }
    finally:
        for proc in procs:
            stop(proc)
    for proc in procs:
        assert proc.returncode is not None
    # the embedded Redis shut down with the server: URL file gone, no server process left
    assert not (homes[0] / "redis.url").exists()
    strays = redis_servers_under(tmp_path)
    for stray in strays:  # never leave one behind, even when the assertion below fails
        stray.kill()
    assert not strays, "an embedded Redis outlived `tandem serve`"


def test_embedded_redis_close_stops_the_server_only_in_its_owner(tmp_path: Path) -> None:
    import psutil

    from tandem.processes import EmbeddedRedis

    embedded = EmbeddedRedis(tmp_path)
    pid = embedded.server.pid
    embedded.server.set("kept", "yes")
    embedded.owner_pid = -1  # as seen from a forked gunicorn worker: not ours to stop
    embedded.close()
    assert psutil.pid_exists(pid) and (tmp_path / "redis.url").exists()
    embedded.owner_pid = os.getpid()
    embedded.close()
    assert not psutil.pid_exists(pid)
    assert not (tmp_path / "redis.url").exists()
    assert (tmp_path / "redis.db").stat().st_size > 0  # saved on the way out
