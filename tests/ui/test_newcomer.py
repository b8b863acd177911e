"""A newcomer's first ten minutes, end to end through real processes (issue #13).

`tandem demo` in a fresh TANDEM_HOME with nothing configured (SQLite + embedded Redis, as
the README's first command runs it); an application sends cases over HTTP and reads every
acknowledged one back; a reviewer decides cases by keyboard in Chromium; the analyst
downloads every export format; then the demo is stopped with SIGTERM and nothing of it may
be left running. The terminal must stay readable throughout.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pyarrow.parquet as pq
import pytest

from tandem.demo import CREDIT_FIELDS, read_rows
from tests.foundation.test_embedded_mode import free_port, wait_ready
from tests.helpers import redis_servers_under, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]

TASK = "loan-review"


def newcomer_env(home: Path) -> dict[str, str]:
    """What a fresh shell has: no Tandem settings at all, only where to keep the data."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_", "DATABASE_"))}
    for key in ("REDIS_URL", "SECRET_KEY", "WEB_CONCURRENCY"):
        env.pop(key, None)
    env["TANDEM_HOME"] = str(home)
    return env


def banner_value(text: str, label: str) -> str:
    match = re.search(rf"{label}:\s+(\S+)", text)
    assert match, f"{label!r} not in the demo's banner:\n{text}"
    return match.group(1)


def read_output(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_a_newcomer_runs_the_demo_loses_nothing_and_stops_it_cleanly(
    tmp_path: Path, browser: Any
) -> None:
    home, port = tmp_path / "home", free_port()
    out_path = tmp_path / "terminal.txt"
    with out_path.open("wb") as terminal:
        demo = subprocess.Popen(
            [sys.executable, "-m", "tandem.cli", "demo", "--port", str(port)],
            env=newcomer_env(home),
            stdout=terminal,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        ready = wait_ready(port, demo, timeout=240)
        assert ready["mode"] == "embedded"
        banner = read_output(out_path)
        app_token = banner_value(banner, "App token")
        assert app_token.startswith("tdm_")
        headers = {"Authorization": f"Bearer {app_token}"}

        rows = [values for values, _ in read_rows("credit_data.csv", "Status", CREDIT_FIELDS)]
        acknowledged: list[str] = []
        with httpx.Client(base_url=base + "/api/v1", headers=headers, timeout=30) as api:
            for values in rows[:200]:
                resp = api.post(f"/tasks/{TASK}/predict", json={"input": values})
                assert resp.status_code in (200, 202), resp.text
                acknowledged.append(resp.json()["case_id"])
            for start in (200, 300):
                items = [{"input": v} for v in rows[start : start + 100]]
                resp = api.post(f"/tasks/{TASK}/predict/batch", json={"items": items})
                assert resp.status_code in (200, 202, 207), resp.text
                results = resp.json()["results"]
                assert len(results) == 100 and all("case_id" in r for r in results), results
                acknowledged += [r["case_id"] for r in results]
            assert len(set(acknowledged)) == 400
            missing = [cid for cid in acknowledged if api.get(f"/cases/{cid}").status_code != 200]
            assert missing == [], f"{len(missing)} of 400 acknowledged cases are gone"

        # The reviewer works ten cases with the keyboard.
        reviewer = browser.new_context(viewport={"width": 1280, "height": 800})
        page = reviewer.new_page()
        page.set_default_timeout(20_000)
        page.goto(base + "/login")
        page.fill("#email", "reviewer@example.com")
        page.fill("#password", banner_password(banner, "reviewer@example.com"))
        page.keyboard.press("Enter")
        page.wait_for_url(base + "/")
        page.goto(f"{base}/tasks/{TASK}/review")
        decided: list[str] = []
        for i in range(10):
            page.wait_for_function(
                "prev => { const w = document.getElementById('workspace');"
                " return !w.hidden && w.dataset.caseId && w.dataset.caseId !== prev; }",
                arg=decided[-1] if decided else "",
            )
            decided.append(str(page.get_attribute("#workspace", "data-case-id")))
            page.keyboard.press("1" if i % 2 == 0 else "2")
        page.wait_for_function(
            "prev => { const w = document.getElementById('workspace');"
            " return w.hidden || w.dataset.caseId !== prev; }",
            arg=decided[-1],
        )
        reviewer.close()
        assert len(set(decided)) == 10, decided
        with httpx.Client(base_url=base + "/api/v1", headers=headers, timeout=30) as api:
            for cid in decided:
                case = poll_case(api, cid)
                assert case["status"] in ("resolved", "corrected", "auto"), case

        # The analyst downloads every format (over HTTP, with the browser's session).
        analyst = browser.new_context()
        page = analyst.new_page()
        page.goto(base + "/login")
        page.fill("#email", "analyst@example.com")
        page.fill("#password", banner_password(banner, "analyst@example.com"))
        page.keyboard.press("Enter")
        page.wait_for_url(base + "/")
        counts = analyst.request.get(f"{base}/api/v1/tasks/{TASK}").json()["counts"]
        assert counts["cases"] >= 4400 + 400, counts
        resolved = counts["cases"] - counts["pending"]
        exported: dict[str, list[dict[str, Any]]] = {}
        for fmt in ("csv", "jsonl", "parquet"):
            resp = analyst.request.get(f"{base}/api/v1/tasks/{TASK}/export?format={fmt}")
            assert resp.status == 200, resp.text()
            body = resp.body()
            assert body, f"{fmt}: empty body"
            content_type = resp.headers["content-type"]
            assert content_type.count("charset") <= 1, content_type
            if fmt == "csv":
                exported[fmt] = list(csv.DictReader(io.StringIO(body.decode("utf-8"))))
            elif fmt == "jsonl":
                exported[fmt] = [json.loads(line) for line in body.decode().splitlines()]
            else:
                exported[fmt] = pq.read_table(io.BytesIO(body)).to_pylist()
        analyst.close()
        for fmt, table in exported.items():
            assert len(table) == counts["cases"], (fmt, len(table), counts)
            labelled = sum(1 for row in table if row["final_label"] not in (None, ""))
            assert labelled == resolved, (fmt, labelled, resolved)
        ids = {row["case_id"] for row in exported["parquet"]}
        assert set(acknowledged) <= ids

        # The terminal stayed readable: the banner and no JSON log lines.
        terminal_text = read_output(out_path)
        json_lines = [ln for ln in terminal_text.splitlines() if ln.lstrip().startswith("{")]
        assert json_lines == [], f"JSON logs on the terminal: {json_lines[:3]}"
        assert (home / "logs" / "tandem.log").stat().st_size > 0
        assert "Traceback" not in terminal_text, terminal_text[-3000:]
        assert "[WARNING]" not in terminal_text, terminal_text[-3000:]

        # A first dashboard without a false alarm.
        task = httpx.get(f"{base}/api/v1/tasks/{TASK}", headers=headers, timeout=10).json()
        assert task["automation"]["widening_frozen"] is False, task["automation"]

        family = [demo.pid, *(p.pid for p in psutil.Process(demo.pid).children(recursive=True))]
        assert len(family) >= 3, family  # web server, its worker(s), the RQ worker, Redis
    finally:
        stop_process(demo, timeout=60)  # SIGTERM to the demo's own process only
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(alive(pid) for pid in family):
        time.sleep(0.5)
    left = [pid for pid in family if alive(pid)]
    strays = redis_servers_under(tmp_path)
    for pid in left:
        psutil.Process(pid).kill()
    for stray in strays:
        stray.kill()
    assert left == [] and strays == [], f"left running after SIGTERM: {left} {strays}"
    terminal_text = read_output(out_path)
    assert "Ready: " in terminal_text and "Tandem stopped." in terminal_text, terminal_text
    # Nothing of the embedded Redis is left in the temporary folder either.
    leftovers = [
        str(conf.parent)
        for conf in Path(tempfile.gettempdir()).glob("tmp*/redis.config")
        if str(home) in conf.read_text(errors="replace")
    ]
    assert leftovers == [], leftovers


def banner_password(banner: str, email: str) -> str:
    match = re.search(rf"{re.escape(email)} / (\S+)", banner)
    assert match, f"no password for {email} in the banner:\n{banner}"
    return match.group(1)


def poll_case(api: httpx.Client, case_id: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        case = api.get(f"/cases/{case_id}").json()
        if case["status"] != "pending" or time.monotonic() > deadline:
            return case
        time.sleep(0.2)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
