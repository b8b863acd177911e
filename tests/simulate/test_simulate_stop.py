"""Stopping `tandem simulate --jobs 2` (SIGTERM to its process group, as a service manager or
Ctrl-C does) leaves nothing running: every replay's embedded Redis is stopped, whatever
phase the replay was in (set-up, predicting, a training burst)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import redis_servers_under

DATASETS = Path(__file__).resolve().parents[2] / "service" / "datasets"


def test_stopped_parallel_replay_leaves_no_redis_running(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["TMPDIR"] = str(tmp_path)  # each replay's scratch folder, and so its Redis, lands here
    proc = subprocess.Popen(
        [sys.executable, "-m", "tandem.cli", "simulate", str(DATASETS / "credit_data.csv"),
         "--label", "Status", "--rows", "400", "--seeds", "2", "--jobs", "2",
         "--out", str(tmp_path / "out")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(redis_servers_under(tmp_path)) < 2:
            assert proc.poll() is None, "the replay ended before it could be stopped"
            assert time.monotonic() < deadline, "the two replays never started their Redis"
            time.sleep(0.2)
        time.sleep(3)  # into the replays: migrations done, chunks predicted and reviewed
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + 15
    while redis_servers_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)  # a replay's children may still be exiting
    assert not redis_servers_under(tmp_path), "a stopped replay left its Redis running"
