"""The product's state as ``GET /metrics`` reports it (docs/operations.md): read from the
database at scrape time, so every web process reports the same truth. Plain values only;
:mod:`service.observability` turns them into Prometheus gauges."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.models import Case, Job, OutboxEntry, Task, WebhookDelivery
from service.policy import LiveStatus
from service.services import automation

QUEUE_STATES = ("waiting", "leased")


@dataclass
class TaskState:
    name: str
    automation_state: str
    threshold: float | None
    coverage: float | None
    certified_error_bound: float | None
    queue: dict[str, int]  # cases per queue state (QUEUE_STATES)
    oldest_waiting: datetime | None
    live: LiveStatus | None  # the live watch, while automating


@dataclass
class MetricsSnapshot:
    tasks: list[TaskState]
    #: (task name, state, count); a job of a task that is gone is named by its id
    training_jobs: list[tuple[str, str, int]] = field(default_factory=list)
    #: task name → run time in seconds of its latest finished training job
    training_last_seconds: dict[str, float] = field(default_factory=dict)
    #: (task name, status, count)
    webhook_deliveries: list[tuple[str, str, int]] = field(default_factory=list)
    #: task name → pending deliveries with at least one failed attempt
    webhooks_retrying: dict[str, int] = field(default_factory=dict)
    outbox_pending: int = 0
    outbox_oldest: datetime | None = None


def metrics_snapshot(session: Session) -> MetricsSnapshot:
    """Everything ``/metrics`` reports about tasks, queues, training, webhooks and the outbox."""
    rows = session.execute(
        select(
            Task.id,
            Task.name,
            Task.automation_state,
            Task.threshold,
            Task.coverage,
            Task.certified_error_bound,
        )
    ).all()
    names = {t.id: t.name for t in rows}
    depth = {
        (tid, state): int(n)
        for tid, state, n in session.execute(
            select(Case.task_id, Case.queue_state, func.count())
            .where(Case.queue_state.is_not(None))
            .group_by(Case.task_id, Case.queue_state)
        ).all()
    }
    oldest = dict(
        session.execute(
            select(Case.task_id, func.min(Case.created_at))
            .where(Case.queue_state == "waiting")
            .group_by(Case.task_id)
        ).all()
    )
    tasks: list[TaskState] = []
    for t in rows:
        live = None
        if t.automation_state == "automating":
            task = session.get(Task, t.id)
            live = automation.live_status(session, task) if task is not None else None
        tasks.append(
            TaskState(
                name=t.name,
                automation_state=t.automation_state,
                threshold=t.threshold,
                coverage=t.coverage,
                certified_error_bound=t.certified_error_bound,
                queue={s: depth.get((t.id, s), 0) for s in QUEUE_STATES},
                oldest_waiting=oldest.get(t.id),
                live=live,
            )
        )
    snapshot = MetricsSnapshot(tasks=tasks)
    for tid, state, n in session.execute(
        select(Job.task_id, Job.state, func.count())
        .where(Job.kind == "train")
        .group_by(Job.task_id, Job.state)
    ).all():
        snapshot.training_jobs.append((names.get(tid, str(tid)), state, int(n)))
    for tid, name in names.items():
        last = session.execute(
            select(Job.started_at, Job.finished_at)
            .where(
                Job.kind == "train",
                Job.task_id == tid,
                Job.state == "finished",
                Job.started_at.is_not(None),
                Job.finished_at.is_not(None),
            )
            .order_by(Job.finished_at.desc())
            .limit(1)
        ).first()
        if last is not None:
            snapshot.training_last_seconds[name] = max(
                0.0, (last.finished_at - last.started_at).total_seconds()
            )
    for tid, status, n in session.execute(
        select(WebhookDelivery.task_id, WebhookDelivery.status, func.count()).group_by(
            WebhookDelivery.task_id, WebhookDelivery.status
        )
    ).all():
        snapshot.webhook_deliveries.append((names.get(tid, str(tid)), status, int(n)))
    for tid, n in session.execute(
        select(WebhookDelivery.task_id, func.count())
        .where(WebhookDelivery.status == "pending", WebhookDelivery.attempts > 0)
        .group_by(WebhookDelivery.task_id)
    ).all():
        snapshot.webhooks_retrying[names.get(tid, str(tid))] = int(n)
    pending, first_pending = session.execute(
        select(func.count(), func.min(OutboxEntry.created_at)).where(
            OutboxEntry.enqueued_at.is_(None)
        )
    ).one()
    snapshot.outbox_pending = int(pending or 0)
    snapshot.outbox_oldest = first_pending
    return snapshot
