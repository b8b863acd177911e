"""Round trips to the database of one claim and one decision through the HTTP API, counted
(issue #20, bench/README.md "Review claim"): every statement, BEGIN and COMMIT a request
sends. On a loaded machine each one waits for a core, so the counts are held where they are
now; a change that adds one fails here with the statements listed.

Counting is deterministic (timings are never asserted): one reviewer, a queue of waiting
cases, a fresh session per request as in production, after a first claim and decision that
warm the process (the token's ``last_used_at`` is written at most once a minute)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from service.db import db_session
from service.schemas.tasks import TaskCreateSchema
from service.services.accounts import create_token
from service.services.audit import SYSTEM
from service.services.tasks import create_task
from service.uow import unit_of_work
from tests.helpers import SIMPLE_TASK, auth
from tests.review.conftest import make_user, queue_cases

#: BEGIN, the token with its user, the person's own row (locked on PostgreSQL: one lease per
#: task even for claims sent at once; read on both, so a claim authenticated before an
#: admin narrowed the person's access takes no lease: review.hold_person), the task with its
#: leases, the head of the queue (locked), the lease (whose UPDATE checks the case's
#: reviews), the audit event, COMMIT. (10 before: the user, the leases and the reviews had
#: queries of their own.)
CLAIM_ROUND_TRIPS = {"postgresql": 8, "sqlite": 8}
#: BEGIN, the token with its user, the case (locked) with its task, its reviews, the review,
#: the audit events (one batched INSERT on PostgreSQL; SQLAlchemy inserts them one by one on
#: SQLite, where a statement is a call into the library, not a round trip), the case, the
#: label counted and the count read in one INSERT ... RETURNING, COMMIT. (17 before: the user,
#: the case read twice, the task three times, the count in a statement of its own.)
DECIDE_ROUND_TRIPS = {"postgresql": 9, "sqlite": 10}
#: After the commit, PostgreSQL's second look at the retrain count: one autocommitted SELECT
#: (3 before: BEGIN, SELECT, COMMIT). SQLite needs none: its writers take turns.
AFTER_COMMIT_ROUND_TRIPS = {"postgresql": 1, "sqlite": 0}


@contextmanager
def round_trips(engine: Engine) -> Iterator[list[str]]:
    """Every round trip on ``engine`` while the block runs: statements, and the BEGIN,
    COMMIT and ROLLBACK of transactions (none on an autocommit connection, which sends
    neither). SQLite's ``BEGIN IMMEDIATE`` is its BEGIN, counted once."""
    sent: list[str] = []

    def autocommit(conn: Connection) -> bool:
        return conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"

    def statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        if not sql.startswith("BEGIN"):
            sent.append(" ".join(sql.split())[:160])

    def begin(conn: Connection) -> None:
        if not autocommit(conn):
            sent.append("BEGIN")

    def commit(conn: Connection) -> None:
        if not autocommit(conn):
            sent.append("COMMIT")

    def rollback(conn: Connection) -> None:
        if not autocommit(conn):
            sent.append("ROLLBACK")

    listeners = [
        ("before_cursor_execute", statement),
        ("begin", begin),
        ("commit", commit),
        ("rollback", rollback),
    ]
    for name, fn in listeners:
        event.listen(engine, name, fn)
    try:
        yield sent
    finally:
        for name, fn in listeners:
            event.remove(engine, name, fn)


def _reviewer_token() -> str:
    with unit_of_work() as session:
        create_task(session, TaskCreateSchema().load(SIMPLE_TASK), SYSTEM)
        email = make_user(session).email
    with unit_of_work() as session:
        return create_token(
            session,
            role="reviewer",
            name="counted",
            task_scope=None,
            actor=SYSTEM,
            user_email=email,
        ).token


def _claim(client: Any, token: str) -> str:
    db_session.remove()  # a request's own session, as teardown gives each in production
    resp = client.post(f"/api/v1/tasks/{SIMPLE_TASK['name']}/queue/claim", headers=auth(token))
    assert resp.status_code == 200, resp.json
    return str(resp.json["case_id"])


def _decide(client: Any, token: str, case_id: str) -> None:
    db_session.remove()
    resp = client.post(
        f"/api/v1/cases/{case_id}/review", json={"label": "good"}, headers=auth(token)
    )
    assert resp.status_code == 200, resp.json


def test_a_claim_and_a_decision_take_no_more_round_trips_than_counted(
    committed_db: Any, engine: Engine, flask_app: Any, backend: str
) -> None:
    token = _reviewer_token()
    queue_cases(SIMPLE_TASK["name"], 3)
    client = flask_app.test_client()
    _decide(client, token, _claim(client, token))  # warm-up

    with round_trips(engine) as claim:
        case_id = _claim(client, token)
    with round_trips(engine) as decision:
        _decide(client, token, case_id)

    listing = "\n".join(["claim:", *claim, "", "decision:", *decision])
    assert len(claim) <= CLAIM_ROUND_TRIPS[backend], listing
    # The decision's own transaction ends at its COMMIT; what follows is the look after it.
    own = decision.index("COMMIT") + 1
    assert own <= DECIDE_ROUND_TRIPS[backend], listing
    assert len(decision) - own <= AFTER_COMMIT_ROUND_TRIPS[backend], listing
