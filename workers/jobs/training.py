"""The training job: one per task at a time (job id ``train-task-{id}``), retried by RQ.

The work itself lives in :mod:`service.services.training_run` so ``tandem demo`` can run it
in-process; this wrapper gives it the worker's app context and RQ's retry budget.
"""

from __future__ import annotations

from typing import Any

from service.resources import training_resources
from service.services import training_run
from workers.context import current_job_id, job


def _retries_left() -> int | None:
    from rq import get_current_job

    current = get_current_job()
    if current is None:
        return None
    return int(current.retries_left or 0)


@job
def train_task(task_id: int) -> dict[str, Any]:
    """Train on the task's human labels, certify at the due checkpoint, maybe promote.

    Runs at background CPU priority with its own thread count (service/resources.py), so a
    worker sharing cores with the web process does not stall predict requests.
    """
    with training_resources():
        return training_run.run_training(task_id, current_job_id(), retries_left=_retries_left())
