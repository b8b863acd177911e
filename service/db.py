"""Database engine, the scoped session, the clock and the backend listeners.

Nothing here commits: every entry point commits once through :func:`service.uow.unit_of_work`.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.pq import ConnStatus
from sqlalchemy import DateTime, MetaData, TypeDecorator, create_engine, event
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.orm import DeclarativeBase, Session, scoped_session, sessionmaker
from sqlalchemy.pool import StaticPool

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on every backend (SQLite drops the zone on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given; use service.db.utcnow()")
        if value is not None and dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


SessionFactory = sessionmaker(expire_on_commit=False, autoflush=True)
db_session: scoped_session[Session] = scoped_session(SessionFactory)


#: A replacement clock for the current context, or None for the real one. Only
#: ``tandem demo`` sets it (:func:`clock`), to replay a bundled history at the times it would
#: have happened; everything that stamps a time reads it through :func:`utcnow`.
_CLOCK: ContextVar[Callable[[], datetime] | None] = ContextVar("tandem_clock", default=None)


def utcnow() -> datetime:
    replacement = _CLOCK.get()
    return replacement() if replacement is not None else datetime.now(UTC)


@contextmanager
def clock(read: Callable[[], datetime]) -> Iterator[None]:
    """Run the block with ``read`` as this context's clock (aware UTC datetimes)."""
    token = _CLOCK.set(read)
    try:
        yield
    finally:
        _CLOCK.reset(token)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Engine tuned per backend: SQLite gets WAL + busy timeout so web and worker processes
    can share the embedded file; PostgreSQL gets a bounded pool that fails fast."""
    if url.startswith("sqlite"):
        options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if url in ("sqlite://", "sqlite:///:memory:"):
            options["poolclass"] = StaticPool
        options.update(kwargs)
        engine_level = options.get("isolation_level")
        engine = create_engine(url, **options)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy drive transactions (BEGIN IMMEDIATE on write below).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # An AUTOCOMMIT connection must stay in autocommit: SQLAlchemy never sends COMMIT
            # on it, so a BEGIN here would leave every statement in a transaction that the
            # pool's reset rolls back (acknowledged cases vanished this way: issue #13).
            options = conn.get_execution_options()
            if options.get("isolation_level", engine_level) == "AUTOCOMMIT":
                return
            if options.get(READ_ONLY_OPTION):
                # A read takes no lock up front (see read_only below).
                conn.exec_driver_sql("BEGIN")
                return
            # IMMEDIATE takes the write lock up front, so two writers queue on busy_timeout
            # instead of one failing with "database is locked" on lock upgrade.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    options = {
        # No pre-ping: it costs a round trip on every checkout of the predict hot path. The
        # checkout hook below finds connections the server closed without one.
        "pool_pre_ping": os.environ.get("TANDEM_DB_PRE_PING", "") == "1",
        "pool_size": 10,
        "max_overflow": 20,
        "pool_timeout": 5,
        "connect_args": {"connect_timeout": 3},
    }
    options.update(kwargs)
    engine = create_engine(url, **options)

    @event.listens_for(engine, "checkout")
    def _drop_if_closed_by_server(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        # A restarted server closed every pooled connection: renew them all now, before any
        # request tries one and fails.
        if closed_by_server(dbapi_conn):
            raise InvalidatePoolError("the server closed this connection")

    return engine


def closed_by_server(conn: Any) -> bool:
    """Whether PostgreSQL closed this idle psycopg connection, found without a round trip.

    A server that shuts down or terminates a backend first sends it a FATAL message, then
    closes the socket; an idle connection that neither LISTENs nor runs anything has nothing
    else to read (a changed server parameter is the rare exception, read here and kept). So
    a readable socket is read: an error or end of file means the connection is gone, and a
    request would have failed on it with a 503 (bench/README.md, "Single predict"; without
    this, each request thread's connection and the pool each cost one failed request after
    a database restart).
    """
    try:
        pgconn = conn.pgconn
        if pgconn.status != ConnStatus.OK:
            return True
        for _ in range(2):  # the FATAL message, then the end of file
            if not select.select([pgconn.socket], [], [], 0)[0]:
                return False
            pgconn.consume_input()
        return bool(pgconn.status != ConnStatus.OK)
    except (psycopg.Error, OSError, ValueError):
        return True


_own_connections = threading.local()


def thread_autocommit_connection(engine: Engine) -> Any:
    """A PostgreSQL DBAPI connection of this thread's own, in autocommit, made by ``engine``
    (same arguments and connect hooks) and detached from its pool.

    For the single predict's one INSERT (service/api/fast_predict.py): a pool checkout,
    switching it to autocommit and back, and the check-in cost more CPU than the statement
    (bench/README.md, "Single predict"). A connection the server closed is replaced before
    use; one inherited across a fork is never used (nor closed: closing it would end the
    parent's session too).
    """
    held: dict[int, tuple[int, Any]] = _own_connections.__dict__.setdefault("by_engine", {})
    pid, conn = held.get(id(engine), (os.getpid(), None))
    if pid != os.getpid():
        _INHERITED.append(conn)
        conn = None
    elif conn is not None and not conn.closed and (conn.broken or closed_by_server(conn)):
        conn.close()
    if conn is None or conn.closed:
        pooled = engine.raw_connection()
        conn = pooled.driver_connection
        assert conn is not None, "a fresh checkout holds its connection"
        pooled.detach()  # ours from now on: the pool neither counts nor resets it
        conn.autocommit = True
        held[id(engine)] = (os.getpid(), conn)
    return conn


#: Connections a forked child found in its thread's slot: kept referenced for the life of
#: the process, so that no finaliser of theirs ever writes on the parent's socket.
_INHERITED: list[Any] = []


READ_ONLY_OPTION = "tandem_read_only"


def read_only(session: Session) -> Session:
    """Begin ``session``'s unit of work as a read that will write nothing.

    On SQLite every other transaction starts with ``BEGIN IMMEDIATE`` and so holds the write
    lock until it ends; a long read (an export streamed to a slow client) would hold back
    every predict meanwhile. A deferred ``BEGIN`` reads a consistent WAL snapshot and takes
    no write lock. PostgreSQL needs nothing: readers never block writers there.
    """
    session.connection(execution_options={READ_ONLY_OPTION: True})
    return session


def is_postgres(session: Session) -> bool:
    bind = session.get_bind()
    return bind.dialect.name == "postgresql"


def configure(engine: Engine) -> None:
    db_session.remove()
    SessionFactory.configure(bind=engine)
