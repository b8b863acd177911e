"""Test fixtures on the real PostgreSQL and Redis of the machine (never mocks).

Each test runs inside a transaction that is rolled back afterwards (the service commits only
SAVEPOINTs), so tests are isolated and fast. Tests that need real commits across connections
(races, workers) use ``committed_db`` which truncates every table afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.helpers import SIMPLE_TASK, auth, make_token

TEST_DATABASE_URL = os.environ.get(
    "TANDEM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/tandem_test"
)
TEST_REDIS_URL = os.environ.get("TANDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from service.config import Settings

    home = tmp_path_factory.mktemp("tandem-home")
    return Settings(
        database_url=TEST_DATABASE_URL,
        redis_url=TEST_REDIS_URL,
        home=home,
        secret_key="test-secret-key-not-for-production",
        embedded=False,
        testing=True,
        session_cookie_secure=False,
    )


@pytest.fixture(scope="session")
def engine(settings: Any) -> Iterator[Engine]:
    from service import migrate
    from service.db import make_engine

    _ensure_database(settings.database_url)
    eng = make_engine(settings.database_url)
    with eng.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    migrate.upgrade(eng)
    yield eng
    eng.dispose()


def _ensure_database(url: str) -> None:
    """Create the test database when missing (each developer may use their own name)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}
        ).scalar()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()


@pytest.fixture(scope="session")
def flask_app(settings: Any, engine: Engine) -> Any:
    from service import create_app

    app = create_app(settings)
    app.config["WTF_CSRF_ENABLED"] = True
    return app


@pytest.fixture
def app(flask_app: Any, db: Any) -> Iterator[Any]:
    with flask_app.app_context():
        yield flask_app


def _clear_caches() -> None:
    from service.services import accounts, predict

    predict.clear_cache()
    accounts._token_cache.clear()


@pytest.fixture
def db(engine: Engine, flask_app: Any) -> Iterator[Any]:
    """A session whose commits are SAVEPOINTs inside one outer transaction, rolled back."""
    from service.db import SessionFactory, db_session

    connection = engine.connect()
    outer = connection.begin()
    db_session.remove()
    SessionFactory.configure(bind=connection, join_transaction_mode="create_savepoint")
    _clear_caches()
    try:
        yield db_session
    finally:
        db_session.remove()
        outer.rollback()
        connection.close()
        SessionFactory.configure(bind=engine, join_transaction_mode="conditional_savepoint")
        _clear_caches()


TABLES = (
    "reviews",
    "audit_events",
    "outbox",
    "webhook_deliveries",
    "exports",
    "jobs",
    "cases",
    "model_versions",
    "tasks",
    "api_tokens",
    "users",
)


@pytest.fixture
def committed_db(engine: Engine, flask_app: Any) -> Iterator[Any]:
    """Real commits (for races and worker processes); every table is emptied afterwards."""
    from service.db import SessionFactory, db_session

    db_session.remove()
    SessionFactory.configure(bind=engine)
    _clear_caches()
    with flask_app.app_context():
        try:
            yield db_session
        finally:
            db_session.remove()
            with engine.begin() as conn:
                conn.execute(text("UPDATE tasks SET active_model_id = NULL"))
                conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
            _clear_caches()


@pytest.fixture
def redis_conn() -> Iterator[Redis]:
    conn = Redis.from_url(TEST_REDIS_URL)
    conn.flushdb()
    yield conn
    conn.flushdb()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def tokens(app: Any) -> dict[str, str]:
    return {role: make_token(role) for role in ("app", "reviewer", "analyst", "admin")}


@pytest.fixture
def task(client: Any, tokens: dict[str, str]) -> dict[str, Any]:
    resp = client.post("/api/v1/tasks", json=SIMPLE_TASK, headers=auth(tokens["admin"]))
    assert resp.status_code == 201, resp.json
    return resp.json
