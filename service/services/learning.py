"""The training run behind the ``train_task`` job (docs/learning.md), kept in ``service`` so
the demo can run it in-process (``service`` never imports ``workers``).

Shape of one run, chosen so a worker killed at any instant leaves nothing half-done:

1. mark the ``jobs`` row started (own short transaction);
2. read the cases: TRAINING SET = labelled cases NOT flagged for audit (reviews below
   threshold, cold start, application outcomes); LEDGER = every flagged case of the current
   ledger epoch in arrival order, labelled or not (never trained on, so it can certify; an
   attempt waits until its first n_j are all labelled); RECENT = the newest cases of all
   traffic. Automatic answers' model labels are never read: only
   ``human_label``;
3. train (minutes, no transaction or row lock held);
4. ONE final transaction: write the version row, certify it, maybe promote it, finish the
   job row. A kill before 4 commits writes nothing; RQ's Retry runs the job again.

Idempotent: when the newest version was trained on exactly the same cases (same SHA-256 of
the ordered case-id list) nothing is retrained; that version is only (re-)certified if the
ledger reached a new checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db import db_session, transaction, utcnow
from service.ml.artifacts import dump_model, load_model
from service.ml.pipeline import FAMILIES, TrainedModel, pipeline_proba, train_model
from service.ml.profile import DataProfile, build_profile, range_checker
from service.models import Case, Job, ModelVersion, Task
from service.services import audit, automation
from service.services.audit import SYSTEM

log = logging.getLogger(__name__)

MIN_TRAINING_CASES = 20
REFERENCE_POINTS = 200
REFERENCE_CASES = 2000
#: Out-of-fold predictions kept per version for the readiness check (docs/policy.md).
READINESS_CASES = 2000
#: Route reasons under which every case went to a person whatever its score: their training
#: cases are a fair sample of traffic (queued low-confidence cases are not).
REPRESENTATIVE_REASONS = ("cold_start", "fallback")


def hgb_max_iter() -> int:
    """Boosting rounds; lowered by ``TANDEM_HGB_MAX_ITER`` on small machines and in tests."""
    return int(os.environ.get("TANDEM_HGB_MAX_ITER", "200"))


def families() -> tuple[str, ...]:
    """Model families compared by CV log loss (``TANDEM_TRAIN_FAMILIES``, comma-separated)."""
    raw = os.environ.get("TANDEM_TRAIN_FAMILIES", "")
    chosen = tuple(f.strip() for f in raw.split(",") if f.strip() in FAMILIES)
    return chosen or FAMILIES


@dataclass
class LabelledData:
    train_ids: list[str]
    train_rows: list[dict[str, Any]]
    train_labels: list[str]
    train_representative: list[bool]
    ledger_rows: list[dict[str, Any]]
    ledger_labels: list[str | None]  # None: the audit label is not in yet
    ledger_forced: list[bool]
    recent_rows: list[dict[str, Any]]
    recent_forced: list[bool]
    snapshot: dict[str, Any]

    @property
    def labelled_ledger(self) -> int:
        return sum(1 for label in self.ledger_labels if label is not None)


def snapshot_of(ids: list[str], labels: list[str]) -> dict[str, Any]:
    """Which cases trained a version: count, id range, SHA-256 of the ordered id list."""
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()
    return {
        "cases": len(ids),
        "first_case_id": ids[0] if ids else None,
        "last_case_id": ids[-1] if ids else None,
        "sha256": digest,
        "label_counts": dict(Counter(labels)),
    }


def collect(session: Session, task: Task) -> LabelledData:
    valid = set(task.labels)
    train = session.execute(
        select(Case.id, Case.input, Case.human_label, Case.reason)
        .where(
            Case.task_id == task.id,
            Case.human_label.is_not(None),
            Case.audit.is_(False),
        )
        .order_by(Case.id)
    ).all()
    train = [r for r in train if r.human_label in valid]
    ledger_stmt = select(Case.input, Case.human_label, Case.reason).where(
        Case.task_id == task.id, Case.audit.is_(True)
    )
    if task.ledger_since is not None:
        ledger_stmt = ledger_stmt.where(Case.created_at > task.ledger_since)
    ledger = session.execute(ledger_stmt.order_by(Case.created_at, Case.id)).all()
    recent = session.execute(
        select(Case.input, Case.reason)
        .where(Case.task_id == task.id)
        .order_by(Case.created_at.desc(), Case.id.desc())
        .limit(automation.RECENT_CASES)
    ).all()
    ids = [r.id for r in train]
    labels = [r.human_label for r in train]
    return LabelledData(
        train_ids=ids,
        train_rows=[r.input for r in train],
        train_labels=labels,
        train_representative=[r.reason in REPRESENTATIVE_REASONS for r in train],
        ledger_rows=[r.input for r in ledger],
        ledger_labels=[r.human_label if r.human_label in valid else None for r in ledger],
        ledger_forced=[r.reason == "forced" for r in ledger],
        recent_rows=[r.input for r in recent],
        recent_forced=[r.reason == "forced" for r in recent],
        snapshot=snapshot_of(ids, labels),
    )


def blocked(
    rows: list[dict[str, Any]], forced: list[bool], profile: DataProfile | None
) -> np.ndarray:
    """Cases the router would never answer automatically under this version: forced review,
    or a value out of the version's training range (reason ``invalid_input``)."""
    check = range_checker(profile) if profile is not None else None
    return np.array(
        [
            f or (check is not None and bool(check(row)))
            for row, f in zip(rows, forced, strict=True)
        ],
        dtype=bool,
    )


def readiness_sample(
    trained: TrainedModel, representative: list[bool], labels: list[str]
) -> dict[str, list[Any]]:
    """The chosen family's out-of-fold predictions on the training cases that are a fair
    sample of traffic (top score, suggested label, right or wrong), at most READINESS_CASES
    of them (an even spread): what the readiness check knows of the version without looking
    at the ledger's labels."""
    keep = [j for j, i in enumerate(trained.oof_index) if representative[i]]
    if len(keep) > READINESS_CASES:
        keep = [keep[int(x)] for x in np.linspace(0, len(keep) - 1, READINESS_CASES)]
    proba = trained.oof_proba[keep] if keep else np.zeros((0, len(labels)))
    top = proba.argmax(axis=1) if keep else np.zeros(0, dtype=int)
    return {
        "score": [round(float(x), 5) for x in proba.max(axis=1)] if keep else [],
        "suggested": [labels[int(j)] for j in top],
        "correct": [
            labels[int(j)] == trained.oof_labels[k] for j, k in zip(top, keep, strict=True)
        ],
    }


def lock_task(session: Session, task_id: int) -> Task | None:
    """The task row locked for this transaction (only the task: its joined active model is
    on the nullable side of an outer join, which PostgreSQL cannot lock).

    ``FOR NO KEY UPDATE``, not ``FOR UPDATE``: it serialises the writers of the task's state
    all the same, but leaves alone the ``FOR KEY SHARE`` lock every INSERT referencing the
    task takes for its foreign key (cases, reviews, audit events). ``FOR UPDATE`` made every
    predict, claim and decision of the task wait while a training job certified under this
    lock — seconds on a large task: the soak's claim p99 of 3.1 s (bench/README.md)."""
    return session.scalar(
        select(Task)
        .where(Task.id == task_id)
        .with_for_update(of=Task, key_share=True)
        .execution_options(populate_existing=True)
    )


def _scores(
    pipeline: Any, rows: list[dict[str, Any]], fields: list[dict[str, Any]], labels: list[str]
) -> tuple[np.ndarray, list[str]]:
    if not rows:
        return np.zeros(0), []
    proba = pipeline_proba(pipeline, rows, fields, labels)
    top = proba.argmax(axis=1)
    return proba.max(axis=1), [labels[int(i)] for i in top]


def _set_job(job_id: str | None, **values: Any) -> None:
    if job_id is None:
        return
    with transaction() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            return
        for key, value in values.items():
            if key == "progress":
                value = {**(job.progress or {}), **value}
            setattr(job, key, value)


def run_training(
    task_id: int,
    job_id: str | None = None,
    *,
    retries_left: int | None = None,
    only_families: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Train, certify and maybe promote; returns the job result (also stored on the job row).

    ``retries_left`` (from RQ) decides whether a failure leaves the job row ``queued`` (RQ
    will run it again) or ``failed``. ``only_families`` narrows the model families compared
    (the demo uses it to stay within its time budget); default: :func:`families`.
    """
    started = time.perf_counter()
    try:
        if job_id is not None:
            with transaction() as session:
                job = session.get(Job, job_id, with_for_update=True)
                if job is not None:
                    job.state = "started"
                    job.attempts = (job.attempts or 0) + 1
                    job.started_at = utcnow()
                    job.finished_at = None
                    job.error = None
                    job.progress = {
                        **(job.progress or {}),
                        "stage": "reading",
                        "pid": os.getpid(),
                    }
        result = _train_and_release(task_id, job_id, started, only_families or families())
    except Exception as exc:
        db_session.remove()
        final = retries_left is None or retries_left <= 0
        _set_job(
            job_id,
            state="failed" if final else "queued",
            error=f"{type(exc).__name__}: {exc}"[:2000],
            finished_at=utcnow() if final else None,
            progress={"stage": "failed" if final else "retrying"},
        )
        raise
    return result


def _train_and_release(
    task_id: int, job_id: str | None, started: float, use_families: tuple[str, ...]
) -> dict[str, Any]:
    with transaction() as session:
        task = session.get(Task, task_id)
        if task is None:
            raise LookupError(f"task {task_id} no longer exists")
        fields = list(task.fields)
        labels = list(task.labels)
        data = collect(session, task)
        newest = session.scalar(
            select(ModelVersion)
            .where(ModelVersion.task_id == task.id, ModelVersion.status != "failed")
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
        reuse_id: int | None = None
        if (
            newest is not None
            and (newest.training_snapshot or {}).get("sha256") == (data.snapshot["sha256"])
        ):
            reuse_id = newest.id
        active_id = task.active_model_id
    db_session.remove()  # no connection held while training

    distinct = set(data.train_labels)
    if reuse_id is None and (len(data.train_ids) < MIN_TRAINING_CASES or len(distinct) < 2):
        result: dict[str, Any] = {
            "outcome": "skipped",
            "reason": f"need {MIN_TRAINING_CASES} labelled cases of at least 2 labels "
            f"outside the audit ledger (have {len(data.train_ids)}, labels {sorted(distinct)})",
        }
        _set_job(
            job_id,
            state="finished",
            result=result,
            finished_at=utcnow(),
            progress={"stage": "finished"},
        )
        return result

    trained = None
    profile: DataProfile | None = None
    oof: dict[str, list[Any]] | None = None
    t_train = time.perf_counter()
    if reuse_id is None:
        _set_job(job_id, progress={"stage": "training", "cases": len(data.train_ids)})
        trained = train_model(
            data.train_rows,
            data.train_labels,
            fields,
            labels,
            families=use_families,
            hgb_max_iter=hgb_max_iter(),
        )
        pipeline = trained.pipeline
        train_fields, train_labels = fields, labels
        artefact = dump_model(pipeline)
        profile = build_profile(data.train_rows, fields)
        oof = readiness_sample(trained, data.train_representative, labels)
    else:
        with transaction() as session:
            row = session.get(ModelVersion, reuse_id)
            assert row is not None and row.artefact is not None
            artefact = row.artefact
            train_fields = (row.profile or {}).get("fields_spec") or fields
            train_labels = (row.profile or {}).get("labels") or labels
            stored = (row.profile or {}).get("data")
            profile = DataProfile.from_dict(stored) if stored else None
            oof = (row.profile or {}).get("readiness")
        db_session.remove()
        pipeline = load_model(artefact)
    train_seconds = time.perf_counter() - t_train

    _set_job(job_id, progress={"stage": "certifying"})
    t_cert = time.perf_counter()
    ledger_scores, ledger_pred = _scores(pipeline, data.ledger_rows, train_fields, train_labels)
    recent_scores, recent_pred = _scores(pipeline, data.recent_rows, train_fields, train_labels)
    active_scores: np.ndarray | None = None
    active_pred: list[str] | None = None
    if active_id is not None and active_id != reuse_id:
        with transaction() as session:
            act = session.get(ModelVersion, active_id)
            act_bytes = act.artefact if act is not None else None
            act_profile = dict(act.profile or {}) if act is not None else {}
        db_session.remove()
        if act_bytes is not None:
            active_scores, active_pred = _scores(
                load_model(act_bytes),
                data.recent_rows,
                act_profile.get("fields_spec") or fields,
                act_profile.get("labels") or labels,
            )
    elif active_id is not None:
        active_scores, active_pred = recent_scores, recent_pred
    evidence = automation.Evidence(
        ledger_scores=ledger_scores,
        ledger_pred=ledger_pred,
        ledger_true=data.ledger_labels,
        recent_scores=recent_scores,
        recent_pred=recent_pred,
        active_recent_scores=active_scores,
        active_recent_pred=active_pred,
        ledger_blocked=blocked(data.ledger_rows, data.ledger_forced, profile),
        recent_blocked=blocked(data.recent_rows, data.recent_forced, profile),
        oof=oof,
    )
    # Held-out reference for the label-free drift check: the ledger is a uniform sample of
    # traffic the model never saw (recent traffic would include its own training cases).
    ref_src = ledger_scores[-REFERENCE_CASES:] if ledger_scores.size else recent_scores
    reference = (
        [float(x) for x in np.quantile(ref_src, (np.arange(REFERENCE_POINTS) + 0.5) / 200)]
        if ref_src.size
        else []
    )
    score_seconds = time.perf_counter() - t_cert

    with transaction() as session:
        task = lock_task(session, task_id)
        if task is None:
            raise LookupError(f"task {task_id} no longer exists")
        version: ModelVersion | None
        created = False
        if reuse_id is None:
            version = session.scalar(
                select(ModelVersion).where(
                    ModelVersion.task_id == task.id,
                    ModelVersion.training_snapshot["sha256"].as_string() == data.snapshot["sha256"],
                )
            )
            if version is None:
                assert trained is not None
                number = (
                    session.scalar(
                        select(func.max(ModelVersion.version)).where(
                            ModelVersion.task_id == task.id
                        )
                    )
                    or 0
                ) + 1
                version = ModelVersion(
                    task_id=task.id,
                    version=number,
                    status="candidate",
                    family=trained.family,
                    artefact=artefact,
                    artefact_sha256=hashlib.sha256(artefact).hexdigest(),
                    metrics=trained.metrics,
                    training_snapshot=data.snapshot,
                    profile={
                        "fields_spec": fields,
                        "labels": labels,
                        "data": profile.to_dict() if profile is not None else None,
                        "reference_scores": reference,
                        "reference_cases": int(ref_src.size),
                        # The suggested labels on the same held-out cases, for the drift
                        # check's label half (a class turning shows there before scores).
                        "reference_label_counts": dict(Counter(ledger_pred[-REFERENCE_CASES:])),
                        "readiness": oof,
                    },
                    certification={},
                    timings={
                        **{k: round(v, 4) for k, v in trained.timings.items()},
                        "train_job": round(train_seconds, 4),
                        "scoring": round(score_seconds, 4),
                    },
                    parent_id=task.active_model_id,
                    job_id=job_id,
                    trained_at=utcnow(),
                )
                session.add(version)
                session.flush()
                created = True
                audit.record(
                    session,
                    "model.trained",
                    SYSTEM,
                    task_id=task.id,
                    details={
                        "version": number,
                        "family": trained.family,
                        "training_cases": data.snapshot["cases"],
                        "snapshot_sha256": data.snapshot["sha256"],
                        "metrics": {
                            k: trained.metrics.get(k) for k in ("accuracy", "log_loss", "ece")
                        },
                        "job_id": job_id,
                    },
                )
        else:
            version = session.get(ModelVersion, reuse_id)
        assert version is not None
        outcome = automation.certify_version(session, task, version, evidence)
        promoted = False
        if outcome.promote:
            automation.promote(session, task, version, SYSTEM, version.certification)
            promoted = True
        elif task.active_model_id is None or (created and task.automation_state == "manual"):
            # Nothing is automated: a newer model only improves the suggestions people see.
            automation.promote(
                session, task, version, SYSTEM, version.certification, reason="suggestions only"
            )
            promoted = True
        result = {
            "outcome": "trained" if created else "reused",
            "version": version.version,
            "family": version.family,
            "training_cases": data.snapshot["cases"],
            "ledger_cases": data.labelled_ledger,
            "flagged_cases": int(ledger_scores.size),
            "certification": {
                "attempted": outcome.attempted,
                "certified": outcome.certified,
                "reason": outcome.reason,
                "threshold": outcome.record.get("threshold"),
                "coverage": outcome.record.get("coverage"),
                "error_bound": outcome.record.get("error_bound"),
            },
            "promoted": promoted,
            "automation": task.automation_state,
            "seconds": round(time.perf_counter() - started, 3),
        }
        if job_id is not None:
            job = session.get(Job, job_id, with_for_update=True)
            if job is not None:
                job.state = "finished"
                job.result = result
                job.error = None
                job.finished_at = utcnow()
                job.progress = {**(job.progress or {}), "stage": "finished"}
    log.info("training task %s: %s", task_id, result)
    return result
