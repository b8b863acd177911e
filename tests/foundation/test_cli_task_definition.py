"""`tandem task create` with the documented example, its help, and the learnability rule:
real processes against the real database (docs/tasks.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from service.db import db_session
from service.models import AuditEvent, Task
from tests.conftest import backend_env
from tests.foundation.test_cli import run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "task.json"


@pytest.fixture
def cli(settings: Any) -> Callable[..., Any]:
    def run(*args: str) -> Any:
        db_session.remove()  # on SQLite an open read would hold the write lock
        return run_cli(args, {**backend_env(settings), "SECRET_KEY": "cli-test-secret"})

    return run


def test_the_documented_example_creates_its_task(cli, committed_db):
    created = cli("task", "create", str(EXAMPLE))
    assert created.returncode == 0, created.stderr
    name = json.loads(EXAMPLE.read_text())["name"]
    assert created.stdout.strip() == name
    row = committed_db().scalar(select(Task).where(Task.name == name))
    assert row.policy == json.loads(EXAMPLE.read_text())["policy"]


def test_a_definition_that_could_never_learn_is_refused(cli, committed_db, tmp_path: Path):
    definition = json.loads(EXAMPLE.read_text())
    definition["policy"]["cold_start_audit_rate"] = 1
    path = tmp_path / "task.json"
    path.write_text(json.dumps(definition))
    result = cli("task", "create", str(path))
    assert result.returncode == 2, result.stderr
    assert "cold_start_audit_rate" in result.stderr and "never" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert committed_db().scalar(select(Task)) is None
    assert committed_db().scalar(select(func.count()).select_from(AuditEvent)) == 0


def test_help_points_to_the_docs_not_to_a_spec(cli):
    task_help = cli("task", "create", "--help")
    assert task_help.returncode == 0
    assert "docs/tasks.md" in task_help.stdout and "docs/examples/task.json" in task_help.stdout
    for args in (("--help",), ("task", "create", "--help"), ("simulate", "--help")):
        assert "SPEC" not in cli(*args).stdout, args
