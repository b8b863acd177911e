"""Private PostgreSQL and Redis servers and the web app (`tandem serve`) for fault tests.

The machine's shared servers are never touched: every fault test starts its own throwaway
instances on free ports and breaks those.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # still starting
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting: {last!r}")


class PrivateRedis:
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: Redis.from_url(self.url).ping())

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class PrivatePostgres:
    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        assert bins, "PostgreSQL server binaries not found"
        self.bin = Path(bins[-1])
        self.dir = Path(tempfile.mkdtemp(prefix="tandem-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        atexit.register(self.destroy)  # even when the test run is interrupted

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def start(self) -> None:
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        )

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        if not self.dir.exists():
            return
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    pg.init()
    from service import migrate

    eng = create_engine(pg.url)
    migrate.upgrade(eng)
    eng.dispose()
    yield pg
    pg.destroy()


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    r = PrivateRedis()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def pg_engine(private_pg: PrivatePostgres) -> Iterator[Engine]:
    from service.db import make_engine

    eng = make_engine(private_pg.url)
    yield eng
    with eng.begin() as conn:
        from sqlalchemy import text

        conn.execute(text("UPDATE tasks SET active_model_id = NULL"))
        conn.execute(
            text(
                "TRUNCATE reviews, audit_events, outbox, webhook_deliveries, exports, jobs, cases, "
                "model_versions, tasks, api_tokens, users RESTART IDENTITY CASCADE"
            )
        )
    eng.dispose()


def app_env(pg: PrivatePostgres, redis: PrivateRedis, home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        DATABASE_URL=pg.url,
        REDIS_URL=redis.url,
        SECRET_KEY="fault-test-secret",
        TANDEM_HOME=str(home),
        TANDEM_INSECURE_COOKIES="1",
        TANDEM_LOG_FORMAT="json",
        PYTHONPATH=str(ROOT),
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


class WebServer:
    """`tandem serve` in production mode (granian, as deployed), on a free port."""

    def __init__(self, env: dict[str, str], workers: int = 2) -> None:
        self.port = free_port()
        self.env = env
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                str(VENV_BIN / "tandem"),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env={**self.env, "TANDEM_WEB_GRACEFUL_TIMEOUT": "2", "TANDEM_ACCESS_LOG": "0"},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for(lambda: httpx.get(self.base + "/healthz", timeout=5).status_code == 200, 60)
        except BaseException:
            self.stop()
            raise

    def worker_pids(self) -> list[int]:
        import psutil

        assert self.proc is not None
        return [c.pid for c in psutil.Process(self.proc.pid).children()]

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
            self.proc = None


def make_token(engine: Engine, role: str) -> str:
    from service.services.accounts import create_token
    from service.services.audit import SYSTEM

    with Session(engine) as session:
        token = create_token(
            session, role=role, name=f"fault-{role}", task_scope=None, actor=SYSTEM
        ).token
        session.commit()
    return token


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"
