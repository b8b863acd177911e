"""Alembic: one head, and a clean upgrade of an empty database on both backends."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from service import migrate
from service.db import Base, make_engine
from tests.conftest import TEST_DATABASE_URL


def test_one_head():
    script = ScriptDirectory.from_config(migrate.alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1


def _assert_matches_models(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], diff


def test_upgrade_empty_sqlite(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    migrate.upgrade(engine)
    assert migrate.at_head(engine)
    assert {
        "tasks",
        "cases",
        "reviews",
        "model_versions",
        "audit_events",
        "users",
        "api_tokens",
        "jobs",
        "exports",
        "outbox",
        "webhook_deliveries",
    } <= set(inspect(engine).get_table_names())
    _assert_matches_models(engine)
    migrate.upgrade(engine)  # idempotent


def test_upgrade_empty_postgres():
    url = make_url(TEST_DATABASE_URL).set(database="tandem_migration_check")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text('DROP DATABASE IF EXISTS "tandem_migration_check" WITH (FORCE)'))
        conn.execute(text('CREATE DATABASE "tandem_migration_check"'))
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        migrate.upgrade(engine)
        assert migrate.at_head(engine)
        _assert_matches_models(engine)
        indexes = {ix["name"] for ix in inspect(engine).get_indexes("cases")}
        assert {
            "ix_cases_queue",
            "ix_cases_queue_audit",
            "ix_cases_task_external",
            "ix_cases_ledger",
        } <= indexes
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text('DROP DATABASE IF EXISTS "tandem_migration_check" WITH (FORCE)'))
        admin.dispose()
