"""A reviewer holds at most one lease per task, and a deactivated person holds none
(docs/review.md, "Leases"; docs/api.md, "Users"), under concurrency too; nor does a person whose
access no longer covers the task.

An outside try found both broken on PostgreSQL: four claims sent at once by one reviewer
took three or four cases, an undo through the API left the case held meanwhile leased too,
and claims in flight while the person was deactivated kept their cases until the lease ran
out. Each claim now takes the person's own row first (``review.hold_person``)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from service.db import db_session
from service.errors import Forbidden, Unauthorized
from service.models import AuditEvent, Case, User
from service.services import review
from service.services.accounts import change_access, deactivate_user, user_actor
from service.services.audit import SYSTEM
from service.uow import unit_of_work
from tests.helpers import SIMPLE_TASK
from tests.review.conftest import make_user, queue_cases

ROUNDS = 12
CLAIMERS = 4


def _task_and_reviewer(cases: int) -> Any:
    from service.schemas.tasks import TaskCreateSchema
    from service.services.tasks import create_task

    with unit_of_work() as session:
        create_task(session, TaskCreateSchema().load(SIMPLE_TASK), SYSTEM)
        actor = user_actor(make_user(session))
    queue_cases(SIMPLE_TASK["name"], cases)
    return actor


def _held_by(user_id: int | None) -> list[str]:
    db_session.remove()
    with unit_of_work() as session:
        return list(
            session.scalars(
                select(Case.id).where(Case.queue_state == "leased", Case.lease_owner_id == user_id)
            )
        )


def _in_threads(work: Any, n: int) -> list[Any]:
    start = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = work()
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            db_session.remove()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:3]
    return results


@pytest.mark.postgres_only("SQLite's writers take turns: two claims never overlap there")
def test_claims_sent_at_once_by_one_reviewer_lease_one_case(committed_db: Any) -> None:
    """Four claims at the same moment, twelve times: each time every claim answers with the
    same case and the reviewer holds exactly that one. (Without the person's row taken
    first, one round in three leased 3-4 cases.)"""
    actor = _task_and_reviewer(ROUNDS * CLAIMERS)

    def claim() -> str | None:
        with unit_of_work() as session:
            claimed = review.claim(session, SIMPLE_TASK["name"], actor)
            return claimed.case.id if claimed else None

    for round_no in range(ROUNDS):
        answers = _in_threads(claim, CLAIMERS)
        held = _held_by(actor.id)
        assert len(held) == 1, (round_no, held, answers)
        assert set(answers) == set(held), (round_no, held, answers)
        with unit_of_work() as session:
            review.release(session, held[0], actor)


def test_an_undo_gives_back_the_case_held_meanwhile(committed_db: Any) -> None:
    """Claim E, decide it, claim D, undo E: E is leased to the reviewer again and D went
    back to the queue with its ``case.released`` event (the API's undo keeps one lease per
    task, as the review page always did by releasing first)."""
    actor = _task_and_reviewer(3)
    with unit_of_work() as session:
        first = review.claim(session, SIMPLE_TASK["name"], actor)
        assert first is not None
        decided = first.case.id
    with unit_of_work() as session:
        review.submit_review(session, decided, "good", actor)
    with unit_of_work() as session:
        second = review.claim(session, SIMPLE_TASK["name"], actor)
        assert second is not None
        held_meanwhile = second.case.id
    with unit_of_work() as session:
        review.undo(session, decided, actor)
    assert _held_by(actor.id) == [decided]
    with unit_of_work() as session:
        case = session.get(Case, held_meanwhile)
        assert case is not None and case.queue_state == "waiting"
        released = session.scalars(
            select(AuditEvent.details).where(
                AuditEvent.case_id == held_meanwhile, AuditEvent.action == "case.released"
            )
        ).all()
        assert released == [{"implicit": True}]


def _race_with_a_claim_in_flight(actor: Any, admin_change: Any) -> tuple[str, list[BaseException]]:
    """A claim leases a case and waits before committing; meanwhile ``admin_change(session,
    user)`` runs in a unit of work of its own (it must wait for the claim), and a second claim
    arrives while the change is under way. Returns the case the first claim took and what
    the second one raised."""
    leased = threading.Event()
    finish = threading.Event()
    claimed: list[str] = []

    def slow_claim() -> None:
        try:
            with unit_of_work() as session:
                got = review.claim(session, SIMPLE_TASK["name"], actor)
                assert got is not None
                claimed.append(got.case.id)
                leased.set()
                assert finish.wait(30)
        finally:
            db_session.remove()

    def change() -> None:
        try:
            with unit_of_work() as session:
                user = session.get(User, actor.id)
                assert user is not None
                admin_change(session, user)
        finally:
            db_session.remove()

    claimer = threading.Thread(target=slow_claim)
    claimer.start()
    assert leased.wait(30)
    admin = threading.Thread(target=change)
    admin.start()
    time.sleep(0.5)
    assert admin.is_alive(), "the admin's change did not wait for the claim in flight"
    late: list[BaseException] = []

    def late_claim() -> None:
        try:
            with unit_of_work() as session:
                review.claim(session, SIMPLE_TASK["name"], actor)
        except BaseException as exc:
            late.append(exc)
        finally:
            db_session.remove()

    latecomer = threading.Thread(target=late_claim)
    latecomer.start()
    time.sleep(0.3)
    finish.set()
    for t in (claimer, admin, latecomer):
        t.join(timeout=30)
        assert not t.is_alive()
    return claimed[0], late


def _given_back_once(case_id: str) -> None:
    with unit_of_work() as session:
        case = session.get(Case, case_id)
        assert case is not None and case.queue_state == "waiting"
        assert (
            session.scalar(
                select(func.count()).where(
                    AuditEvent.case_id == case_id, AuditEvent.action == "case.released"
                )
            )
            == 1
        )


@pytest.mark.postgres_only("SQLite's writers take turns: a claim never overlaps a deactivation")
def test_a_claim_in_flight_when_its_reviewer_is_deactivated_gives_its_case_back(
    committed_db: Any,
) -> None:
    """A claim has leased a case and not yet committed when an admin deactivates the
    reviewer: the deactivation waits for it, then gives the case back. A claim that comes
    while the deactivation is under way is refused."""
    actor = _task_and_reviewer(3)
    claimed, late = _race_with_a_claim_in_flight(
        actor, lambda session, user: deactivate_user(session, user, SYSTEM)
    )
    assert len(late) == 1 and isinstance(late[0], Unauthorized), late
    assert _held_by(actor.id) == []
    _given_back_once(claimed)


@pytest.mark.postgres_only("SQLite's writers take turns: a claim never overlaps an admin's change")
@pytest.mark.parametrize(
    "change", [{"role": "analyst"}, {"task_scope": ["other-task"]}], ids=["role", "scope"]
)
def test_a_claim_in_flight_when_its_reviewers_access_narrows_gives_its_case_back(
    committed_db: Any, change: dict[str, Any]
) -> None:
    """The same race with a narrower access instead of a deactivation: the change waits for
    the claim, then gives its case back; a claim that comes meanwhile (authenticated with
    the rights the person had) is refused on the rights the account holds now."""
    from service.schemas.tasks import TaskCreateSchema
    from service.services.tasks import create_task

    actor = _task_and_reviewer(3)
    with unit_of_work() as session:
        create_task(session, TaskCreateSchema().load(dict(SIMPLE_TASK, name="other-task")), SYSTEM)
    claimed, late = _race_with_a_claim_in_flight(
        actor, lambda session, user: change_access(session, user, SYSTEM, **change)
    )
    assert len(late) == 1 and isinstance(late[0], Forbidden), late
    assert late[0].details == {"reason": "access_changed"}
    assert _held_by(actor.id) == []
    _given_back_once(claimed)
