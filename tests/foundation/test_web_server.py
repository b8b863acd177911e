"""How `tandem serve` configures its web server (tandem/processes.py): production and embedded
defaults, the operator's environment, and an access log that is JSON without query strings
(tandem/access_log.py)."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import pytest
from werkzeug.test import Client

from tandem.access_log import AccessLog
from tandem.processes import web_server_options

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


def logged(app: Any, method: str, path: str, **kwargs: Any) -> tuple[Any, list[Any]]:
    """Serve one request through the access log; the response and the lines it wrote."""
    reader, writer = os.pipe()
    try:
        resp = Client(AccessLog(app, fd=writer)).open(path, method=method, **kwargs)
        body = resp.get_data()  # a streamed body is logged once the server closes it
        resp.close()
    finally:
        os.close(writer)
    with os.fdopen(reader, "rb") as out:
        lines = [json.loads(line) for line in out.read().splitlines()]
    return (resp, body), lines


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("202 ACCEPTED", [("Content-Type", "text/plain")])
    return [b"ok"]


def test_access_log_line_is_json_and_has_no_query_string():
    (resp, body), lines = logged(
        hello,
        "POST",
        '/api/v1/tasks/a"b/predict?token=secret',
        environ_base={"REMOTE_ADDR": "10.0.0.7"},
    )
    assert (resp.status_code, body) == (202, b"ok")
    assert len(lines) == 1
    line = lines[0]
    assert set(line) == {"remote", "method", "path", "status", "duration_ms", "time"}
    assert (line["remote"], line["method"], line["status"]) == ("10.0.0.7", "POST", 202)
    assert line["path"] == '/api/v1/tasks/a"b/predict'  # escaped, and no query string
    assert "secret" not in json.dumps(line)
    assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}", line["time"])


def test_access_log_paths_are_utf8_as_the_client_sent_them():
    (_, _), lines = logged(hello, "GET", "/a/caf%C3%A9/%FF?token=abc")
    assert lines[0]["path"] == "/a/café/\ufffd"


def test_a_streamed_answer_is_logged_when_it_ends():
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Any:
            yield b"a"
            time.sleep(0.05)
            yield b"b"

        def close(self) -> None:
            closed.append(True)

    def streamed(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/csv")])
        return Body()

    (_, body), lines = logged(streamed, "GET", "/api/v1/exports/1/download")
    assert body == b"ab" and closed == [True]
    assert lines[0]["status"] == 200 and lines[0]["duration_ms"] >= 50


def test_a_failing_app_is_logged_as_500():
    reader, writer = os.pipe()

    def broken(environ: dict[str, Any], start_response: Any) -> Any:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        AccessLog(broken, fd=writer)({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, None)
    os.close(writer)
    with os.fdopen(reader, "rb") as out:
        assert json.loads(out.read())["status"] == 500


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
