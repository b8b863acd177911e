"""The unit of work: one commit per request, form post, command, job step or replay step.

Every entry point (API view, review UI view, CLI command, RQ job, demo seeding, simulator)
writes through :func:`unit_of_work`, and nothing below it commits (services and lower layers
only ``flush``). Jobs a change needs are recorded in the ``outbox`` table in the same
transaction (:func:`service.services.outbox.defer`); only once that transaction has committed
are they pushed to Redis. A change that rolls back leaves no job anywhere: its outbox rows
vanish with it, and nothing was pushed. Whatever the push after commit cannot send (Redis
down, the process killed) the periodic ``relay_outbox`` job sends later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from service.db import db_session
from service.redis_conn import get_redis
from service.services import outbox

log = logging.getLogger(__name__)


@contextmanager
def unit_of_work() -> Iterator[Session]:
    """Commit once on success, roll back on any exception; push recorded jobs after commit.

    Needs an app context (the Redis connection is the app's).
    """
    session = db_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        session.info.pop(outbox.RECORDED, None)
        session.info.pop(_AFTER_COMMIT, None)
        raise
    actions = session.info.pop(_AFTER_COMMIT, {})
    if session.info.pop(outbox.RECORDED, False):
        relay_recorded()
    for action in actions.values():
        action()


_AFTER_COMMIT = "tandem_after_commit"


def after_commit(session: Session, key: str, action: Callable[[], None]) -> None:
    """Run ``action`` once the unit of work ``session`` belongs to has committed; once per
    ``key`` however often it is asked for; never if it rolls back. For work that must see what
    other transactions committed alongside this one (the retrain trigger's second look,
    service.services.labels); the action opens its own unit of work (or reads in autocommit)."""
    session.info.setdefault(_AFTER_COMMIT, {})[key] = action


def relay_recorded() -> int:
    """Push every pending outbox entry to Redis in its own short transaction; how many.

    Never raises: a Redis outage (or a race with the sweeper) only delays the jobs, which the
    periodic ``relay_outbox`` job sends when Redis is back.
    """
    try:
        redis = get_redis()  # before any transaction: without Redis nothing is opened
        with unit_of_work() as session:
            return outbox.relay(session, redis)
    except Exception:
        log.warning("outbox relay deferred", exc_info=False)
        db_session.remove()
        return 0


def relay_pending() -> int:
    """Push every pending outbox entry, batch by batch, each batch its own unit of work (the
    periodic sweeper); how many were pushed. Raises when Redis is unreachable."""
    total = 0
    while True:
        with unit_of_work() as session:
            sent = outbox.relay(session, get_redis())
        total += sent
        if sent == 0:
            return total
