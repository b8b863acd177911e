"""`tandem worker` and the processes it starts: none outlives it (issue #16, item 9)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest

from tests.conftest import backend_env
from workers.schedule import LEADER_LOCK

pytestmark = pytest.mark.timeout(180)


def start_worker(settings: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--queues", "maintenance"],
        env=backend_env(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_no_child_of_a_worker_outlives_it(settings: Any, redis_conn: Any, how: int) -> None:
    """Before, after `kill -9` of the worker its scheduler child kept running and kept the
    cron leader lock, so no other worker's scheduler could take over."""
    worker = start_worker(settings)
    try:
        wait_for(lambda: redis_conn.exists(LEADER_LOCK), 90, "no scheduler took the lead")
        children = psutil.Process(worker.pid).children(recursive=True)
        assert children, "the worker started no scheduler process"
        worker.send_signal(how)
        worker.wait(timeout=60)
        wait_for(
            lambda: not any(alive(c) for c in children),
            30,
            f"left running: {[c.pid for c in children if alive(c)]}",
        )
        if how == signal.SIGTERM:  # a clean stop hands the lead over at once
            assert not redis_conn.exists(LEADER_LOCK)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        for child in psutil.Process().children(recursive=True):
            if "service.cli" in " ".join(child.cmdline()):
                child.kill()
