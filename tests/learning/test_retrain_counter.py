"""The retrain counter (docs/learning.md, ``retrain_every``): labels that arrive while a
training job is already running are counted for the next one. The running job read its data
before they came, so resetting the counter then lost them: an outside test saw ~200 new
labels left unused after 276 reviews during one training run."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sqlalchemy import select

from service.models import Job, Task
from service.services.audit import SYSTEM
from service.services.labels import label_recorded
from service.services.tasks import update_task
from service.services.training import training_job_id

LABEL = SimpleNamespace(audit=False, route="review", reason="cold_start")


def _task(db: Any, name: str) -> Task:
    row = db.scalar(select(Task).where(Task.name == name))
    assert row is not None
    return row


def test_labels_during_a_running_training_count_for_the_next(db: Any, task: Any) -> None:
    row = _task(db, task["name"])
    update_task(db(), row, {"policy": {"retrain_every": 3}}, SYSTEM)
    db.add(Job(id=training_job_id(row), kind="train", task_id=row.id, state="started"))
    db.commit()
    for _ in range(4):
        label_recorded(db(), row, LABEL)  # type: ignore[arg-type]
    db.commit()
    job = db.get(Job, training_job_id(row))
    assert job.state == "started"  # the running job is left to finish
    assert _task(db, task["name"]).labels_since_training == 4
    job.state = "finished"
    db.commit()
    label_recorded(db(), row, LABEL)  # type: ignore[arg-type]
    db.commit()
    assert db.get(Job, training_job_id(row)).state == "queued"  # the next job, with them all
    assert _task(db, task["name"]).labels_since_training == 0


def test_labels_while_a_job_waits_in_the_queue_are_its_own(db: Any, task: Any) -> None:
    """A queued job has not read its data yet: it sees these labels, so they start afresh."""
    row = _task(db, task["name"])
    update_task(db(), row, {"policy": {"retrain_every": 3}}, SYSTEM)
    db.add(Job(id=training_job_id(row), kind="train", task_id=row.id, state="queued"))
    db.commit()
    for _ in range(3):
        label_recorded(db(), row, LABEL)  # type: ignore[arg-type]
    db.commit()
    assert _task(db, task["name"]).labels_since_training == 0
    assert db.get(Job, training_job_id(row)).state == "queued"
