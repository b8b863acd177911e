"""50 reviewers in parallel threads work 1,000 cases on real PostgreSQL.

Every case must end resolved exactly once with exactly one counted review, no review may be
lost, and no case may be leased to two reviewers at once (checked on the audit trail, whose
per-case order is the lock order)."""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict
from typing import Any

import pytest
from sqlalchemy import func, select

from service.db import db_session
from service.errors import Conflict
from service.models import AuditEvent, Case, Review
from service.services import review
from service.services.accounts import user_actor
from service.uow import unit_of_work
from tests.helpers import SIMPLE_TASK
from tests.review.conftest import make_user, queue_cases

REVIEWERS = 50
CASES = 1000


@pytest.mark.timeout(600)
def test_fifty_reviewers_resolve_a_thousand_cases_exactly_once(
    committed_db: Any, engine: Any
) -> None:
    from service.db import SessionFactory, make_engine

    # One connection per reviewer, as 50 web workers would have.
    race_engine = make_engine(
        engine.url.render_as_string(hide_password=False),
        pool_size=REVIEWERS,
        max_overflow=0,
        pool_timeout=60,
    )
    SessionFactory.configure(bind=race_engine)
    try:
        _race()
    finally:
        db_session.remove()
        SessionFactory.configure(bind=engine)
        race_engine.dispose()


def _race() -> None:
    from service.schemas.tasks import TaskCreateSchema
    from service.services.audit import SYSTEM
    from service.services.tasks import create_task

    with unit_of_work() as session:
        create_task(session, TaskCreateSchema().load(SIMPLE_TASK), SYSTEM)
        actors = [user_actor(make_user(session)) for _ in range(REVIEWERS)]
    ids = set(queue_cases(SIMPLE_TASK["name"], CASES))
    decided: list[tuple[str, int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(REVIEWERS)

    def work(actor: Any, seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            while True:
                with unit_of_work() as session:
                    claimed = review.claim(session, SIMPLE_TASK["name"], actor)
                    case_id = claimed.case.id if claimed else None
                if case_id is None:
                    with unit_of_work() as session:
                        left = session.scalar(
                            select(func.count()).where(Case.queue_state.is_not(None))
                        )
                    if not left:
                        return
                    time.sleep(0.02)
                    continue
                if rng.random() < 0.1:
                    with unit_of_work() as session:
                        review.release(session, case_id, actor)
                    continue
                label = rng.choice(["good", "bad"])
                try:
                    with unit_of_work() as session:
                        review.submit_review(session, case_id, label, actor)
                except Conflict:
                    continue
                with lock:
                    decided.append((case_id, actor.id, label))
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            db_session.remove()

    threads = [
        threading.Thread(target=work, args=(a, i), daemon=True) for i, a in enumerate(actors)
    ]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=500)
    elapsed = time.monotonic() - began
    assert not errors, errors[:3]
    assert not any(t.is_alive() for t in threads)

    session = db_session()
    cases = session.execute(
        select(Case.id, Case.status, Case.final_label, Case.queue_state, Case.resolved_by_user_id)
    ).all()
    assert {c.id for c in cases} == ids
    assert all(c.status == "resolved" and c.queue_state is None for c in cases)
    reviews = session.execute(
        select(Review.case_id, Review.reviewer_id, Review.label).where(
            Review.retracted_at.is_(None)
        )
    ).all()
    # Exactly one review per case, and it is the one the reviewer was told was accepted.
    assert len(reviews) == CASES and len({r.case_id for r in reviews}) == CASES
    assert sorted(map(tuple, reviews)) == sorted(decided)
    final = {c.id: (c.final_label, c.resolved_by_user_id) for c in cases}
    assert all(final[cid] == (label, uid) for cid, uid, label in decided)

    # The lease history of every case alternates claim -> (release | resolve).
    history: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for case_id, action, actor_name in session.execute(
        select(AuditEvent.case_id, AuditEvent.action, AuditEvent.actor)
        .where(AuditEvent.case_id.is_not(None))
        .order_by(AuditEvent.id)
    ):
        if action in ("case.claimed", "case.released", "case.resolved", "case.lease_expired"):
            history[case_id].append((action, actor_name))
    for case_id, events in history.items():
        holder = None
        for action, actor_name in events:
            if action == "case.claimed":
                assert holder is None, f"{case_id} claimed by {actor_name} while {holder} held it"
                holder = actor_name
            else:
                assert holder is not None, f"{case_id}: {action} without a lease"
                if action != "case.lease_expired":
                    assert holder == actor_name
                holder = None
        assert events[-1][0] == "case.resolved" and holder is None
    print(f"\n{REVIEWERS} reviewers resolved {CASES} cases in {elapsed:.1f}s")
