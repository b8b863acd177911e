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
from tests.helpers import stop_process
from workers.schedule import LEADER_LOCK

pytestmark = pytest.mark.timeout(180)


def start_worker(settings: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tandem.cli", "worker", "--queues", "maintenance"],
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
        # A warm stop first finishes the job at hand (a scheduled maintenance job may have just
        # started): on a machine loaded by other work that once took over 60 s.
        worker.wait(timeout=150)
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
            if "tandem.cli" in " ".join(child.cmdline()):
                child.kill()


def test_a_job_whose_worker_was_killed_runs_again_within_a_minute_or_two(
    settings: Any, redis_conn: Any, tmp_path: Any
) -> None:
    """Issue #16: after `kill -9` of the worker mid-training the job stayed "started" with a
    dead process for 10.5 minutes (RQ's 90 s heartbeat slack, then a sweep every 10
    minutes). Now its heartbeat lapses after 30 s and live workers sweep every 30 s."""
    from rq import Retry
    from rq.job import Job

    from service import queues

    marker = tmp_path / "first-run"
    queue = queues.rq_queue("maintenance", redis_conn)
    queue.enqueue(
        "tests.ops.ops_jobs.stall_once",
        kwargs={"marker": str(marker)},
        job_id="stall-once",
        retry=Retry(max=2, interval=[1]),
        job_timeout=900,
    )
    first = start_worker(settings)
    second = None
    try:
        wait_for(marker.exists, 90, "the job never started")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        killed_at = time.monotonic()
        second = start_worker(settings)

        def finished() -> bool:
            job = Job.fetch("stall-once", connection=redis_conn, serializer=queues.SERIALIZER)
            return job.get_status() == "finished"

        wait_for(finished, 150, "the abandoned job was not run again")
        assert time.monotonic() - killed_at < 150
    finally:
        for proc in (first, second):
            stop_process(proc)
