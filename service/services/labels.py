"""What happens when a case receives a human label (review or application outcome).

One place for the consequences, so every labelling path behaves the same: the retrain
counter moves (and training is requested every ``retrain_every`` labels), and a label on an
audited automatic answer feeds the live watch of the error rate.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.models import Case, Task
from service.policy import Policy
from service.services import automation, training
from service.services.audit import SYSTEM


def label_recorded(
    session: Session, task: Task, case: Case, *, request_id: str | None = None
) -> None:
    task.labels_since_training += 1
    policy = Policy.from_dict(task.policy)
    if task.labels_since_training >= policy.retrain_every:
        training.request_training(
            session, task, SYSTEM, reason="retrain_every", request_id=request_id
        )
    if case.audit and case.route == "auto":
        automation.after_audited_label(session, task, request_id=request_id)
