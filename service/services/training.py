"""Requesting training: at most one training job per task at a time (deterministic job id)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import queues
from service.models import Job, Task
from service.services import audit, outbox
from service.services.audit import Actor

TRAIN_JOB = "workers.jobs.training.train_task"


def training_job_id(task: Task) -> str:
    return f"train-task-{task.id}"


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
    the labels counted meanwhile stay counted and trigger the next job after it."""
    existing = session.scalar(select(Job).where(Job.id == training_job_id(task)).with_for_update())
    if existing is not None and existing.state == "started":
        return existing
    task.labels_since_training = 0
    if existing is not None and existing.state == "queued":
        return existing
    if existing is None:
        existing = Job(id=training_job_id(task), kind="train", task_id=task.id)
        session.add(existing)
    existing.state = "queued"
    existing.progress = {"reason": reason}
    existing.result = None
    existing.error = None
    existing.attempts = 0
    existing.created_by = actor.label
    existing.started_at = None
    existing.finished_at = None
    session.flush()
    outbox.defer(
        session,
        TRAIN_JOB,
        queue=queues.TRAINING,
        job_id=existing.id,
        request_id=request_id,
        task_id=task.id,
    )
    audit.record(
        session,
        "training.requested",
        actor,
        task_id=task.id,
        details={"reason": reason, "job_id": existing.id},
        request_id=request_id,
    )
    return existing
