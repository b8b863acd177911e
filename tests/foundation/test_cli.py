"""The `tandem` command line (docs/operations.md): real processes against the real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from service.db import db_session
from service.models import ApiToken, AuditEvent, Task, User
from service.services.accounts import hash_token
from tests.conftest import backend_env


@pytest.fixture
def tandem(settings: Any) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs `tandem ARGS` as a real process against this test's database and Redis."""

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        # End this test's own read first: on SQLite an open transaction holds the write
        # lock (BEGIN IMMEDIATE), and the command would wait for it.
        db_session.remove()
        return run_cli(args, {**backend_env(settings), "SECRET_KEY": "cli-test-secret"}, stdin)

    return run


def run_cli(
    args: tuple[str, ...], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_token_create_prints_only_the_token_and_stores_its_hash(tandem, committed_db):
    result = tandem("token", "create", "--role", "app", "--name", "billing")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tdm_")
    token = lines[0]
    row = committed_db().scalar(select(ApiToken).where(ApiToken.name == "billing"))
    assert row.token_hash == hash_token(token)
    assert token not in json.dumps(
        [e.details for e in committed_db().scalars(select(AuditEvent)).all()]
    )
    assert (
        committed_db().scalar(select(AuditEvent).where(AuditEvent.action == "token.created"))
        is not None
    )


def test_user_and_task_create(tandem, committed_db, tmp_path: Path):
    result = tandem(
        "user",
        "create",
        "Ann@Example.com",
        "--role",
        "reviewer",
        "--password-stdin",
        stdin="correct horse battery\n",
    )
    assert result.returncode == 0, result.stderr
    user = committed_db().scalar(select(User))
    assert user.email == "ann@example.com"
    assert user.password_hash.startswith("$argon2")
    definition = tmp_path / "task.json"
    definition.write_text(
        json.dumps(
            {
                "name": "loan-review",
                "labels": ["good", "bad"],
                "fields": [{"name": "review", "type": "text"}],
            }
        )
    )
    created = tandem("task", "create", str(definition))
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "loan-review"
    assert committed_db().scalar(select(Task.name)) == "loan-review"
    scoped = tandem("token", "create", "--role", "app", "--task", "loan-review")
    assert scoped.returncode == 0, scoped.stderr


def test_failures_exit_non_zero_with_one_line_on_stderr(tandem, committed_db, tmp_path: Path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"name": "x", "labels": ["only-one"], "fields": []}))
    cases = [
        tandem("task", "create", str(bad_json)),
        tandem("task", "create", str(invalid)),
        tandem("token", "create", "--role", "app", "--task", "no-such-task"),
        tandem(
            "user",
            "create",
            "x@example.com",
            "--role",
            "reviewer",
            "--password-stdin",
            stdin="short\n",
        ),
        tandem("token", "create", "--role", "god"),
        tandem(
            "user",
            "create",
            "app@example.com",
            "--role",
            "app",
            "--password-stdin",
            stdin="long enough\n",
        ),
    ]
    for result in cases:
        assert result.returncode != 0
        assert result.stdout == ""
        assert len(result.stderr.strip().splitlines()) >= 1
        assert "Traceback" not in result.stderr
    for result in cases[:4]:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert committed_db().scalar(select(Task)) is None
    assert "'app' is not one of" in cases[-1].stderr
    assert committed_db().scalar(select(User).where(User.email == "app@example.com")) is None


def test_db_upgrade_creates_the_embedded_database(tmp_path: Path):
    env = {
        **os.environ,
        "TANDEM_HOME": str(tmp_path / "home"),
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "SECRET_KEY": "",
    }
    result = run_cli(("db", "upgrade"), env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "home" / "tandem.db").exists()
    assert (tmp_path / "home" / "secret_key").exists()


def test_task_create_refuses_text_that_is_not_unicode(tandem, committed_db, tmp_path: Path):
    definition = tmp_path / "task.json"
    definition.write_text(
        '{"name": "t", "labels": ["good", "b\\ud800"], "fields": [{"name": "x", "type": "text"}]}'
    )
    result = tandem("task", "create", str(definition))
    assert result.returncode != 0 and "labels.1" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert committed_db().scalar(select(Task)) is None
