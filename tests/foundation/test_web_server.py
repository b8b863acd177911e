"""How `tandem serve` configures its web server (tandem/processes.py): production and embedded
defaults, the operator's environment, and an access log that is JSON without query strings."""

from __future__ import annotations

import json
import os

import pytest

from tandem.processes import ACCESS_LOG_FORMAT, web_server_options

KNOBS = (
    "WEB_CONCURRENCY",
    "TANDEM_WEB_THREADS",
    "TANDEM_ACCESS_LOG",
    "TANDEM_WEB_GRACEFUL_TIMEOUT",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in KNOBS:
        monkeypatch.delenv(name, raising=False)


def test_production_defaults_use_processes_and_threads_and_log_access():
    options = web_server_options(embedded=False, workers=None)
    assert options["workers"] == 2
    assert options["blocking_threads"] == 4
    assert options["log_access"] is True
    assert options["respawn_failed_workers"] is True
    assert options["workers_kill_timeout"] == 30


def test_embedded_defaults_one_process_and_a_quiet_terminal():
    options = web_server_options(embedded=True, workers=None)
    threads = min(8, 2 * (os.cpu_count() or 1) + 1)  # granian warns above 2 per core + 1
    assert (options["workers"], options["blocking_threads"], options["log_access"]) == (
        1,
        threads,
        False,
    )
    assert options["workers_kill_timeout"] == 3  # Ctrl-C on the demo stops within seconds


def test_operator_environment_wins_and_the_command_line_beats_it(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "5")
    monkeypatch.setenv("TANDEM_WEB_THREADS", "2")
    monkeypatch.setenv("TANDEM_ACCESS_LOG", "0")
    monkeypatch.setenv("TANDEM_WEB_GRACEFUL_TIMEOUT", "7")
    options = web_server_options(embedded=False, workers=None)
    assert (options["workers"], options["blocking_threads"]) == (5, 2)
    assert options["log_access"] is False
    assert options["workers_kill_timeout"] == 7
    assert web_server_options(embedded=False, workers=3)["workers"] == 3


def test_access_log_line_is_json_and_has_no_query_string():
    # The atoms granian fills in (granian.log.log_request_builder); the query string is a
    # separate atom the format never uses.
    atoms = {
        "addr": "10.0.0.7",
        "time": "2026-11-26 18:00:00 +0000",
        "dt_ms": 3.14159,
        "status": 202,
        "path": "/api/v1/tasks/credit/predict",
        "query_string": "token=x",
        "method": "POST",
        "scheme": "http",
        "protocol": "HTTP/1.1",
    }
    line = json.loads(ACCESS_LOG_FORMAT % atoms)
    assert line == {
        "remote": "10.0.0.7",
        "method": "POST",
        "path": "/api/v1/tasks/credit/predict",
        "status": 202,
        "duration_ms": 3.1,
        "time": "2026-11-26 18:00:00 +0000",
    }
    assert "query_string" not in ACCESS_LOG_FORMAT


@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_a_bad_setting_is_refused_by_name(monkeypatch, value):
    monkeypatch.setenv("TANDEM_WEB_THREADS", value)
    with pytest.raises(ValueError, match="TANDEM_WEB_THREADS must be a whole number"):
        web_server_options(embedded=False, workers=None)


@pytest.mark.parametrize("value", ["yes", "true", "2"])
def test_access_log_switch_is_0_or_1(monkeypatch, value):
    monkeypatch.setenv("TANDEM_ACCESS_LOG", value)
    with pytest.raises(ValueError, match="TANDEM_ACCESS_LOG must be 0 or 1"):
        web_server_options(embedded=False, workers=None)
    monkeypatch.setenv("TANDEM_ACCESS_LOG", "1")
    assert web_server_options(embedded=True, workers=None)["log_access"] is True


def test_serve_refuses_a_bad_setting_before_starting_anything(tmp_path, monkeypatch):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(TANDEM_HOME=str(tmp_path / "home"), WEB_CONCURRENCY="many")
    done = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "WEB_CONCURRENCY must be a whole number of at least 1, not 'many'" in done.stderr
    # Settings made the home folder (and its secret key); nothing was started in it.
    started = {"redis.db", "redis.url", "tandem.db"} & {
        p.name for p in (tmp_path / "home").iterdir()
    }
    assert not started


def test_serve_refuses_zero_workers_on_the_command_line():
    from click.testing import CliRunner

    from tandem.cli import main

    result = CliRunner().invoke(main, ["serve", "--workers", "0"])
    assert result.exit_code == 2
    assert "--workers" in result.output


@pytest.mark.slow
def test_embedded_serve_runs_no_other_thread_when_the_web_server_forks(tmp_path):
    """granian forks its workers from the serving process: a thread alive at that moment may
    hold a lock the forked worker then waits on for ever (an import lock held by the "Ready"
    announcer hung every request of a worker, once in a few starts on a busy machine)."""
    import subprocess
    import sys

    probe = (
        "import sys, threading\n"
        "import tandem.processes as runner\n"
        "def fake_granian(app, host, port, options):\n"
        "    print('threads at fork:', sorted(t.name for t in threading.enumerate()))\n"
        "runner._granian = fake_granian\n"
        "runner.serve(host='127.0.0.1', port=int(sys.argv[1]), web_workers=None)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(TANDEM_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "-c", probe, "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "threads at fork: ['MainThread']" in done.stdout, done.stdout + done.stderr
