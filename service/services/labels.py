"""What happens when a case receives a human label (review or application outcome).

One place for the consequences, so every labelling path behaves the same: the retrain
counter moves (and training is requested every ``retrain_every`` labels), and a label on an
audited automatic answer feeds the live watch of the error rate.

The counter is append-only rows (service.services.training.count_labels), never an update
of the task row, so decisions of one task do not wait for each other. The trigger stays
exact: the decision that brings the count to ``retrain_every`` requests training in its own
transaction, under the task row's lock and on a fresh count. Two decisions committing at the
same moment may each miss the other's uncommitted label there, so each also looks again
right after it commits (:func:`service.uow.after_commit`), when every label committed before
it is visible: the last of them to commit sees the full count. (On SQLite writers take turns,
so the count inside the transaction is already complete.)
"""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service.db import db_session, is_postgres
from service.models import Case, Job, Task
from service.policy import Policy
from service.services import automation, training
from service.services.audit import SYSTEM
from service.uow import after_commit, unit_of_work

log = logging.getLogger(__name__)


def label_recorded(
    session: Session, task: Task, case: Case, *, request_id: str | None = None
) -> None:
    total, rows = training.count_label_and_read(session, task.id)
    every = Policy.from_dict(task.policy).retrain_every
    if total >= every:
        _retrain(session, task, request_id=request_id)
    elif not is_postgres(session):
        # SQLite has one writer at a time: this count saw every other label, and the rows
        # can be folded here. PostgreSQL looks again after the commit (and folds there).
        training.compact_label_count(session, task.id, rows)
    if is_postgres(session):
        task_id = task.id
        after_commit(
            session, f"retrain-check-{task_id}", lambda: _check_after_commit(task_id, every)
        )
    if case.audit and (case.route == "auto" or case.reason == "audit"):
        # An audited automatic answer, or one held for its audit verdict (audit_mode "hold"):
        # either way it is the live watch's evidence.
        automation.after_audited_label(session, task, request_id=request_id)


def _retrain(session: Session, task: Task, *, request_id: str | None = None) -> bool:
    """``retrain_every`` labels are counted: request training, unless one runs (the labels
    counted meanwhile trigger the next one after it). Returns whether it did."""
    every = Policy.from_dict(task.policy).retrain_every
    # Read without a lock: while a training runs, every later decision lands here and must
    # not queue behind the others on the job row.
    state = session.scalar(select(Job.state).where(Job.id == training.training_job_id(task)))
    if state == "started":
        return False
    if is_postgres(session):
        lock = select(Task.id).where(Task.id == task.id).with_for_update(key_share=True)
        session.scalar(lock)
        # Counted again under the lock: a concurrent request may have just reset the count.
        if training.labels_since_training(session, task.id) < every:
            return False
    training.request_training(session, task, SYSTEM, reason="retrain_every", request_id=request_id)
    return True


def _check_after_commit(task_id: int, every: int) -> None:
    """The trigger's second look (see the module's docstring), with ``every`` the task's
    ``retrain_every`` as the decision read it; it also folds a task's count rows when a large
    ``retrain_every`` lets them pile up. Usually neither is due, which one autocommitted read
    tells (no BEGIN and COMMIT round trips); otherwise a short transaction of its own looks
    again and acts. A failure here leaves the decision committed: the next label looks
    again."""
    try:
        total, rows = _read_count(task_id)
        if total < every and rows <= training.COMPACT_ROWS:
            return
        with unit_of_work() as session:
            task = session.get(Task, task_id)
            if task is None:
                return
            total, rows = training.label_count(session, task_id)
            if total >= Policy.from_dict(task.policy).retrain_every:
                _retrain(session, task)
            else:
                training.compact_label_count(session, task_id, rows)
    except Exception:
        log.warning("retrain check after commit failed (task %s)", task_id, exc_info=True)
        db_session.remove()


def _read_count(task_id: int) -> tuple[int, int]:
    """:func:`training.label_count` outside any transaction: one statement in autocommit on a
    pooled connection, through psycopg itself (SQLAlchemy's switch to AUTOCOMMIT and back
    cost ~7x the CPU, bench/README.md, "Claim and decide on fewer CPU cycles"); in tests,
    whose session is bound to one connection, a unit of work of its own."""
    bind = db_session().get_bind()
    if isinstance(bind, Engine) and bind.dialect.name == "postgresql":
        if not db_session().in_transaction():
            pooled = bind.raw_connection()
            try:
                conn = pooled.driver_connection
                assert conn is not None, "a checked-out connection holds its driver's"
                conn.autocommit = True
                try:
                    row = conn.execute(_COUNT_SQL, (task_id,)).fetchone()
                finally:
                    conn.autocommit = False
            finally:
                pooled.close()
            return int(row[0]), int(row[1])
    with unit_of_work() as session:
        return training.label_count(session, task_id)


#: :func:`training.label_count`'s query as psycopg takes it.
_COUNT_SQL = "SELECT coalesce(sum(n), 0), count(*) FROM retrain_labels WHERE task_id = %s"
