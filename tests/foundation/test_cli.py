"""The `tandem` command line (SPEC §13): real processes against the real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from service.models import ApiToken, AuditEvent, Task, User
from service.services.accounts import hash_token
from tests.conftest import TEST_DATABASE_URL, TEST_REDIS_URL


def tandem(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Any:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    base.update(
        {
            "DATABASE_URL": TEST_DATABASE_URL,
            "REDIS_URL": TEST_REDIS_URL,
            "SECRET_KEY": "cli-test-secret",
        }
    )
    if env is not None:
        base.update(env)
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=base,
        timeout=120,
    )


def test_token_create_prints_only_the_token_and_stores_its_hash(committed_db):
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


def test_user_and_task_create(committed_db, tmp_path: Path):
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


def test_failures_exit_non_zero_with_one_line_on_stderr(committed_db, tmp_path: Path):
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
    ]
    for result in cases:
        assert result.returncode != 0
        assert result.stdout == ""
        assert len(result.stderr.strip().splitlines()) >= 1
        assert "Traceback" not in result.stderr
    for result in cases[:4]:
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert committed_db().scalar(select(Task)) is None


def test_db_upgrade_creates_the_embedded_database(tmp_path: Path):
    env = {
        "TANDEM_HOME": str(tmp_path / "home"),
        "DATABASE_URL": "",
        "REDIS_URL": "",
        "SECRET_KEY": "",
    }
    result = tandem("db", "upgrade", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "home" / "tandem.db").exists()
    assert (tmp_path / "home" / "secret_key").exists()
