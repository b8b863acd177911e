"""Tasks: definition, change, and their live status (docs/tasks.md, docs/api.md)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.errors import Conflict, Forbidden, NotFound, ValidationFailed
from service.models import Case, Job, Task
from service.policy import Policy, effective_audit_rate, learning_blockers
from service.services import audit, automation
from service.services.audit import Actor
from service.services.webhooks import redact_url


def get_task(session: Session, name: str, actor: Actor | None = None) -> Task:
    return check_task(session.scalar(select(Task).where(Task.name == name)), name, actor)


def check_task(task: Task | None, name: str, actor: Actor | None = None) -> Task:
    """``task`` (looked up by ``name``) once it exists and the actor may use it."""
    if task is None:
        raise NotFound(f"task {name!r} not found", {"task": name})
    if actor is not None and not actor.may_access(task.name):
        raise Forbidden(f"not allowed to use task {name!r}", {"task": name})
    return task


def list_tasks(session: Session, actor: Actor) -> list[Task]:
    tasks = session.scalars(select(Task).order_by(Task.name)).all()
    return [t for t in tasks if actor.may_access(t.name)]


def create_task(session: Session, data: dict[str, Any], actor: Actor) -> Task:
    """``data`` is already validated by ``TaskCreateSchema``."""
    if actor.task_scope is not None:
        # A new task lies outside any scope: creating one is for admins of every task (a
        # scoped admin could otherwise squat names it can then not even see).
        raise Forbidden(
            "only an admin for every task can create tasks", {"task_scope": list(actor.task_scope)}
        )
    require_learnable(data["policy"])
    if session.scalar(select(Task.id).where(Task.name == data["name"])) is not None:
        raise Conflict(f"task {data['name']!r} already exists", {"name": [data["name"]]})
    webhook = data.get("webhook") or {}
    task = Task(
        name=data["name"],
        labels=list(data["labels"]),
        fields=[_clean_field(f) for f in data["fields"]],
        policy=dict(data["policy"]),
        review=dict(data["review"]),
        webhook_url=webhook.get("url"),
        webhook_secret=webhook.get("secret"),
        automation_state="manual",
    )
    session.add(task)
    session.flush()
    audit.record(
        session,
        "task.created",
        actor,
        task_id=task.id,
        details={
            "name": task.name,
            "labels": task.labels,
            "fields": task.fields,
            "policy": task.policy,
            "webhook": bool(task.webhook_url),
        },
    )
    return task


def require_learnable(policy: dict[str, Any]) -> None:
    """Refuse (422, nothing stored) a policy under which the task could never train a model:
    accepted silently, such a task would wait in cold start forever."""
    blockers = learning_blockers(Policy.from_dict(policy))
    if blockers:
        raise ValidationFailed(
            "The task could never learn with these settings: "
            + "; ".join(f"{name} {why}" for name, why in blockers.items()),
            {"policy": {name: [why] for name, why in blockers.items()}},
        )


def _clean_field(spec: dict[str, Any]) -> dict[str, Any]:
    out = {"name": spec["name"], "type": spec["type"], "required": bool(spec.get("required", True))}
    if spec.get("max_length"):
        out["max_length"] = int(spec["max_length"])
    return out


def update_task(session: Session, task: Task, changes: dict[str, Any], actor: Actor) -> Task:
    """Apply a validated ``TaskPatchSchema`` payload. Only additive or policy changes: labels
    and fields already used by stored cases can never be removed or retyped."""
    if "policy" in changes:  # checked before anything changes
        require_learnable({**task.policy, **changes["policy"]})
    before: dict[str, Any] = {}
    after: dict[str, Any] = {}
    labels = list(task.labels)
    if "add_labels" in changes:
        new = [x for x in changes["add_labels"] if x not in labels]
        if len(set(new)) != len(new):
            raise ValidationFailed("duplicate labels", {"add_labels": ["Labels must be unique."]})
        if new:
            before["labels"], labels = list(labels), labels + new
            after["labels"] = labels
            task.labels = labels
    if "add_fields" in changes:
        existing = {f["name"] for f in task.fields}
        clash = [f["name"] for f in changes["add_fields"] if f["name"] in existing]
        if clash:
            raise ValidationFailed(
                "fields already exist", {"add_fields": [f"{n} already exists" for n in clash]}
            )
        before["fields"] = list(task.fields)
        task.fields = list(task.fields) + [_clean_field(f) for f in changes["add_fields"]]
        after["fields"] = task.fields
    if "policy" in changes:
        policy = {**task.policy, **changes["policy"]}
        unknown = [x for x in policy.get("never_automate", []) if x not in labels]
        unknown += [x for x in policy.get("label_targets", {}) if x not in labels]
        if unknown:
            raise ValidationFailed(
                "policy names unknown labels", {"policy": [f"unknown labels: {sorted(unknown)}"]}
            )
        if policy.get("certification_margin", 0.0) >= policy.get("target_error", 0.02):
            raise ValidationFailed(
                "certification_margin must be below target_error",
                {"policy": ["certification_margin must be below target_error"]},
            )
        before["policy"], after["policy"] = task.policy, policy
        old_policy = Policy.from_dict(task.policy)
        task.policy = policy
        # An edit that voids the running certification takes effect now, not at the next
        # checkpoint (docs/policy.md, "Editing the policy").
        voided = automation.policy_changed(
            session, task, old_policy, Policy.from_dict(policy), actor
        )
        if voided:
            after["automation"] = {"stopped": voided}
    if "review" in changes:
        review = {**task.review, **changes["review"]}
        names = {f["name"] for f in task.fields}
        unknown = sorted(set(review.get("primary_fields") or []) - names)
        if unknown:
            raise ValidationFailed(
                "primary_fields names unknown fields", {"review": [f"unknown fields: {unknown}"]}
            )
        before["review"], after["review"] = task.review, review
        task.review = review
    if "webhook" in changes:
        webhook = changes["webhook"]
        before["webhook"] = redact_url(task.webhook_url) if task.webhook_url else None
        task.webhook_url = webhook["url"] if webhook else None
        if webhook is None:
            task.webhook_secret = None
        elif webhook.get("secret"):
            task.webhook_secret = webhook["secret"]
        after["webhook"] = redact_url(task.webhook_url) if task.webhook_url else None
    if not after:
        return task
    task.revision += 1
    audit.record(
        session, "task.changed", actor, task_id=task.id, details={"before": before, "after": after}
    )
    session.flush()
    return task


def current_audit_rate(task: Task) -> float:
    """The flag rate a case arriving now gets (stored with the case as its inclusion prob.)."""
    policy = Policy.from_dict(task.policy)
    return effective_audit_rate(
        policy,
        automating=task.automation_state == "automating",
        coverage=task.coverage or 0.0,
        fallback=task.automation_state == "fallback",
        drift_warning=task.widening_frozen,
    )


def task_status(session: Session, task: Task, actor: Actor | None = None) -> dict[str, Any]:
    """The task as the API shows it: definition plus live automation, training and counts."""
    counts_row = session.execute(
        select(
            func.count(),
            func.count().filter(Case.status.in_(("pending", "in_review"))),
            func.count().filter(Case.label_source.in_(("reviewer", "application"))),
            func.count().filter(Case.route == "auto"),
        ).where(Case.task_id == task.id)
    ).one()
    job = session.scalar(
        select(Job)
        .where(Job.task_id == task.id, Job.kind == "train")
        .order_by(Job.created_at.desc())
        .limit(1)
    )
    training_state = "idle"
    if job is not None and job.state in ("queued", "started"):
        training_state = "queued" if job.state == "queued" else "running"
    active = task.active_model
    return {
        "name": task.name,
        "labels": task.labels,
        "fields": task.fields,
        "policy": task.policy,
        "review": {"primary_fields": [], **task.review},  # every key, set or not
        # Webhook settings are an admin's business; credentials in the URL are never shown.
        "webhook": {"url": redact_url(task.webhook_url)}
        if task.webhook_url and (actor is None or actor.role == "admin")
        else None,
        "automation": {
            "state": task.automation_state,
            "threshold": task.threshold,
            "model_version": active.version if active else None,
            "certified_error_bound": task.certified_error_bound,
            "coverage": task.coverage,
            "audit_rate": round(current_audit_rate(task), 6),
            "widening_frozen": task.widening_frozen,
            "reason": task.automation_reason,
            "changed_at": task.automation_changed_at,
        },
        "training": {
            "state": training_state,
            "job_id": job.id if job is not None and training_state != "idle" else None,
        },
        "counts": {
            "cases": counts_row[0],
            "pending": counts_row[1],
            "labelled": counts_row[2],
            "auto": counts_row[3],
        },
        "created_at": task.created_at,
        "updated_at": task.updated_at,
    }


def case_counts(session: Session, task: Task) -> tuple[int, int]:
    """How many cases the task has received, and how many of them were answered
    automatically (the task list's automation rate)."""
    total, auto = session.execute(
        select(func.count(), func.count().filter(Case.route == "auto")).where(
            Case.task_id == task.id
        )
    ).one()
    return int(total), int(auto)
