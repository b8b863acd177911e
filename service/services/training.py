"""Requesting training: at most one training job per task at a time (deterministic job id),
on demand, every ``retrain_every`` labels, or by the periodic trigger (:func:`retrain_due`).
The run itself is :mod:`service.services.training_run`."""

from __future__ import annotations

from datetime import timedelta

from redis import Redis
from sqlalchemy import Connection, Select, delete, func, insert, select, text
from sqlalchemy.orm import Session

from service import queues
from service.db import is_postgres, utcnow
from service.models import Case, Job, ModelVersion, RetrainLabel, Task
from service.services import audit, jobs, outbox
from service.services.audit import SYSTEM, Actor

TRAIN_JOB = "workers.jobs.training.train_task"


#: Rows of a task's count compacted into one above this many (a large ``retrain_every``).
COMPACT_ROWS = 256


def training_job_id(task: Task) -> str:
    return f"train-task-{task.id}"


def count_labels(session: Session, task_id: int, n: int = 1) -> None:
    """Count ``n`` new human labels toward the task's next training: one appended row, so
    concurrent decisions never wait on each other (no row is updated)."""
    session.execute(insert(RetrainLabel).values(task_id=task_id, n=n))


def count_label_and_read(session: Session, task_id: int, n: int = 1) -> tuple[int, int]:
    """:func:`count_labels` and then :func:`label_count`, in one round trip. The insert
    returns the sum over the task's other rows: an INSERT's subquery sees the new row on
    SQLite but not on PostgreSQL, so both leave it out by id and it is added here."""
    session.flush()  # the decision's own writes first, as an ORM statement would
    before, other_rows = session.execute(_COUNT_AND_READ, {"task_id": task_id, "n": n}).one()
    return int(before) + n, int(other_rows) + 1


_COUNT_AND_READ = text(
    "INSERT INTO retrain_labels (task_id, n) VALUES (:task_id, :n) RETURNING"
    " (SELECT coalesce(sum(o.n), 0) FROM retrain_labels AS o"
    "  WHERE o.task_id = :task_id AND o.id <> retrain_labels.id),"
    " (SELECT count(*) FROM retrain_labels AS o"
    "  WHERE o.task_id = :task_id AND o.id <> retrain_labels.id)"
)


def label_count(session: Session, task_id: int) -> tuple[int, int]:
    """(labels counted since training was last requested, rows holding them): the rows
    committed, and this transaction's own."""
    total, rows = session.execute(_label_count_query(task_id)).one()
    return int(total), int(rows)


def label_count_on(conn: Connection, task_id: int) -> tuple[int, int]:
    """:func:`label_count` on a Core connection (an autocommitted read)."""
    total, rows = conn.execute(_label_count_query(task_id)).one()
    return int(total), int(rows)


def _label_count_query(task_id: int) -> Select[int, int]:
    return select(func.coalesce(func.sum(RetrainLabel.n), 0), func.count()).where(
        RetrainLabel.task_id == task_id
    )


def labels_since_training(session: Session, task_id: int) -> int:
    return label_count(session, task_id)[0]


def compact_label_count(session: Session, task_id: int, rows: int) -> bool:
    """Fold the task's ``rows`` count rows into one when there are many, if no one else
    holds the task row (the reset in :func:`request_training` takes it first, so the two
    never interleave: a fold committed after a reset began would bring back rows it
    deleted). Returns whether it folded."""
    if rows <= COMPACT_ROWS:
        return False
    lock = select(Task.id).where(Task.id == task_id)
    if is_postgres(session):
        lock = lock.with_for_update(key_share=True, skip_locked=True)
    if session.scalar(lock) is None:
        return False
    # Exactly the rows this statement deleted (never a concurrent insert) go into the sum.
    folded = session.scalars(
        delete(RetrainLabel).where(RetrainLabel.task_id == task_id).returning(RetrainLabel.n)
    ).all()
    if folded:
        count_labels(session, task_id, sum(folded))
    return True


def active_training_job(session: Session, task: Task) -> Job | None:
    return session.scalar(
        select(Job).where(Job.id == training_job_id(task), Job.state.in_(("queued", "started")))
    )


def request_training(
    session: Session, task: Task, actor: Actor, *, reason: str, request_id: str | None = None
) -> Job:
    """Queue training unless a job for this task is already queued or running (then that
    job is returned).

    The retrain counter starts afresh only for a job that has yet to read its data: a queued
    one sees every label committed before it starts, a running one has read them already, so
    the labels counted meanwhile stay counted and trigger the next job after it.

    Requests for one task are serialised on the task row (``FOR NO KEY UPDATE``: inserts
    that reference the task go on), so two of them never both create the job row, and the
    count's reset never interleaves with a compaction (:func:`compact_label_count`)."""
    lock = select(Task.id).where(Task.id == task.id)
    if is_postgres(session):
        lock = lock.with_for_update(key_share=True)
    session.scalar(lock)
    existing = session.scalar(select(Job).where(Job.id == training_job_id(task)).with_for_update())
    if existing is not None and existing.state == "started":
        return existing
    # The labels this transaction sees (its own and every one committed) are this job's;
    # one committed meanwhile by a concurrent decision stays, counted for the next.
    session.execute(delete(RetrainLabel).where(RetrainLabel.task_id == task.id))
    if existing is not None and existing.state == "queued":
        return existing
    if existing is None:
        existing = Job(id=training_job_id(task), kind="train", task_id=task.id)
    return jobs.queue_job(
        session,
        existing,
        TRAIN_JOB,
        queue=queues.TRAINING,
        actor=actor,
        event="training.requested",
        details={"reason": reason, "job_id": existing.id},
        request_id=request_id,
        progress={"reason": reason},
        task_id=task.id,
    )


#: The periodic retrain trigger: labels below ``retrain_every`` still reach a model within
#: this long after the last version was trained.
RETRAIN_AFTER = timedelta(hours=1)
#: A training job row left queued/started this long while RQ no longer knows the job (its
#: worker machine died and the registry was cleaned) is taken as lost and requested again.
LOST_JOB_AFTER = timedelta(minutes=5)


def retrain_due(session: Session, redis: Redis) -> list[str]:
    """The periodic retrain trigger (docs/learning.md): a task with human labels newer than
    its latest version (older than ``RETRAIN_AFTER``), or with labels and no version at all,
    gets a training job unless one is queued or running. Lost job rows are recovered first.
    Returns the names of the tasks for which training was requested."""
    now = utcnow()
    requested: list[str] = []
    for task in session.scalars(select(Task).order_by(Task.id)).all():
        running = active_training_job(session, task)
        if running is not None:
            stamp = running.started_at or running.created_at
            lost = (
                stamp is not None
                and now - stamp > LOST_JOB_AFTER
                and outbox.live_job_created_at(redis, running.id) is None
            )
            if not lost:
                continue
            running.state = "failed"
            running.error = "lost: the queue no longer holds this job"
            running.finished_at = now
            audit.record(
                session, "training.lost", SYSTEM, task_id=task.id, details={"job_id": running.id}
            )
        latest = session.scalar(
            select(ModelVersion.trained_at)
            .where(ModelVersion.task_id == task.id, ModelVersion.trained_at.is_not(None))
            .order_by(ModelVersion.trained_at.desc())
            .limit(1)
        )
        newer = (
            select(func.count())
            .select_from(Case)
            .where(Case.task_id == task.id, Case.human_label.is_not(None))
        )
        if latest is not None:
            if now - latest < RETRAIN_AFTER:
                continue
            newer = newer.where(Case.human_labelled_at > latest)
        if int(session.scalar(newer) or 0) == 0:
            continue
        request_training(session, task, SYSTEM, reason="schedule")
        requested.append(task.name)
    return requested
