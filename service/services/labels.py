"""What happens when a case receives a human label (review or application outcome).

One place for the consequences, so every labelling path behaves the same: the retrain
counter moves (and training is requested every ``retrain_every`` labels), and a label on an
audited automatic answer feeds the live watch of the error rate.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service.models import Case, Task
from service.policy import Policy
from service.services import automation, training
from service.services.audit import SYSTEM


def label_recorded(
    session: Session, task: Task, case: Case, *, request_id: str | None = None
) -> None:
    # Atomic in the database: concurrent reviews must not lose increments, and the row lock
    # it takes is held only for the rest of this (short) transaction.
    count = session.execute(
        update(Task)
        .where(Task.id == task.id)
        .values(labels_since_training=Task.labels_since_training + 1)
        .returning(Task.labels_since_training)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    set_committed_value(task, "labels_since_training", count)
    policy = Policy.from_dict(task.policy)
    if count >= policy.retrain_every:
        training.request_training(
            session, task, SYSTEM, reason="retrain_every", request_id=request_id
        )
    if case.audit and (case.route == "auto" or case.reason == "audit"):
        # An audited automatic answer, or one held for its audit verdict (audit_mode "hold"):
        # either way it is the live watch's evidence.
        automation.after_audited_label(session, task, request_id=request_id)
