"""One training run, the work behind the ``train_task`` job (docs/learning.md), kept in the
library so the demo and the simulator can run it in-process.

A run is a fixed sequence of steps with named commit points, chosen so a worker killed at any
instant leaves nothing half-done and RQ's Retry may run the whole job again:

1. **start** — the ``jobs`` row is marked ``started`` (its own unit of work);
2. **read** — one read of the cases: TRAINING SET = labelled cases NOT flagged for audit
   (reviews below threshold, cold start, application outcomes); LEDGER = every flagged case
   of the current ledger epoch in arrival order, labelled or not (never trained on, so it
   can certify; an attempt waits until its first n_j are all labelled); RECENT = the newest
   cases of all traffic. Automatic answers' model labels are never read: only
   ``human_label``. Writes nothing;
3. **fit** — the job's progress says ``training`` (a unit of work of its own), then the model
   is trained with no transaction or row lock held (minutes); when the newest version was
   trained on exactly the same cases (same SHA-256 of the ordered case-id list) its artefact
   is read instead and nothing is retrained;
4. **score** — progress ``certifying``; the new (or reused) version and the active one score
   the ledger and recent traffic. Reads only;
5. **record** — ONE unit of work writes the version row, certifies it, maybe promotes it and
   finishes the job row. The version is found again by its snapshot SHA-256, so a retry
   after this commit creates no second version; a kill before it commits writes nothing.

Every step before **record** writes only the job row's progress, so running the job again
from the start is always safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from service.db import db_session, utcnow
from service.ml.profile import DataProfile, build_profile, range_checker
from service.models import Case, Job, ModelVersion, Task
from service.services import audit, automation
from service.services.audit import SYSTEM
from service.uow import unit_of_work

if TYPE_CHECKING:
    from service.ml.pipeline import TrainedModel

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
    from service.ml.pipeline import FAMILIES  # the training stack loads where it trains

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


def training_cases(task_id: int, *columns: Any) -> Select[Any]:
    """The training set: the task's cases labelled by a person and not drawn for the audit
    sample, in id order (the order the snapshot's SHA-256 is taken over)."""
    return (
        select(*columns)
        .where(Case.task_id == task_id, Case.human_label.is_not(None), Case.audit.is_(False))
        .order_by(Case.id)
    )


def collect(session: Session, task: Task) -> LabelledData:
    valid = set(task.labels)
    train = session.execute(
        training_cases(task.id, Case.id, Case.input, Case.human_label, Case.reason)
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
    from service.ml.pipeline import pipeline_proba

    proba = pipeline_proba(pipeline, rows, fields, labels)
    top = proba.argmax(axis=1)
    return proba.max(axis=1), [labels[int(i)] for i in top]


def stored_predictor(
    pipeline: Any, fields: list[dict[str, Any]], labels: list[str]
) -> bytes | None:
    """The compiled predictor's stored form (service/ml/fast.py, ``predictor_state``): the
    web processes score the version from it with NumPy alone. None when it has none."""
    from service.ml.fast import compile_predictor, predictor_state

    predictor = compile_predictor(pipeline, fields, labels)
    return predictor_state(predictor, pipeline, fields, labels)


def _set_job(job_id: str | None, **values: Any) -> None:
    """Update the job row people follow (state, progress, result), in its own unit of work."""
    if job_id is None:
        return
    with unit_of_work() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            return
        for key, value in values.items():
            if key == "progress":
                value = {**(job.progress or {}), **value}
            setattr(job, key, value)


def _release_connection() -> None:
    """Hand the session's connection back: none is held while training or scoring."""
    db_session.remove()


def run_training(
    task_id: int,
    job_id: str | None = None,
    *,
    retries_left: int | None = None,
    only_families: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Train, certify and maybe promote; returns the job result (also stored on the job row).

    The steps and their commit points are in this module's docstring. ``retries_left`` (from
    RQ) decides whether a failure leaves the job row ``queued`` (RQ will run it again) or
    ``failed``. ``only_families`` narrows the model families compared (the demo uses it to
    stay within its time budget); default: :func:`families`.
    """
    started = time.perf_counter()
    try:
        _start(job_id)
        read = _read(task_id)
        if read.reuse_id is None and not read.enough:
            result = read.skipped_result()
            _set_job(
                job_id,
                state="finished",
                result=result,
                finished_at=utcnow(),
                progress={"stage": "finished"},
            )
            return result
        fitted = _fit(read, job_id, only_families or families())
        scored = _score(read, fitted, job_id)
        result = _record(task_id, job_id, read, fitted, scored, started)
    except Exception as exc:
        _release_connection()
        final = retries_left is None or retries_left <= 0
        _set_job(
            job_id,
            state="failed" if final else "queued",
            error=f"{type(exc).__name__}: {exc}"[:2000],
            finished_at=utcnow() if final else None,
            progress={"stage": "failed" if final else "retrying"},
        )
        raise
    log.info("training task %s: %s", task_id, result)
    return result


# ----------------------------------------------------------------------- 1. start


def _start(job_id: str | None) -> None:
    if job_id is None:
        return
    with unit_of_work() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is not None:
            job.state = "started"
            job.attempts = (job.attempts or 0) + 1
            job.started_at = utcnow()
            job.finished_at = None
            job.error = None
            job.progress = {**(job.progress or {}), "stage": "reading", "pid": os.getpid()}


# ----------------------------------------------------------------------- 2. read


@dataclass
class Read:
    """What the run knows after its read (plain values: no session is open after it)."""

    fields: list[dict[str, Any]]
    labels: list[str]
    data: LabelledData
    reuse_id: int | None  # the newest version, when it was trained on exactly these cases
    active_id: int | None

    @property
    def enough(self) -> bool:
        distinct = set(self.data.train_labels)
        return len(self.data.train_ids) >= MIN_TRAINING_CASES and len(distinct) >= 2

    def skipped_result(self) -> dict[str, Any]:
        distinct = sorted(set(self.data.train_labels))
        return {
            "outcome": "skipped",
            "reason": f"need {MIN_TRAINING_CASES} labelled cases of at least 2 labels "
            f"outside the audit ledger (have {len(self.data.train_ids)}, labels {distinct})",
        }


def _read(task_id: int) -> Read:
    with unit_of_work() as session:
        task = session.get(Task, task_id)
        if task is None:
            raise LookupError(f"task {task_id} no longer exists")
        data = collect(session, task)
        newest = session.scalar(
            select(ModelVersion)
            .where(ModelVersion.task_id == task.id, ModelVersion.status != "failed")
            .order_by(ModelVersion.version.desc())
            .limit(1)
        )
        same_cases = (
            newest is not None
            and (newest.training_snapshot or {}).get("sha256") == data.snapshot["sha256"]
        )
        read = Read(
            fields=list(task.fields),
            labels=list(task.labels),
            data=data,
            reuse_id=newest.id if same_cases and newest is not None else None,
            active_id=task.active_model_id,
        )
    _release_connection()
    return read


# ----------------------------------------------------------------------- 3. fit


@dataclass
class Fitted:
    pipeline: Any
    artefact: bytes
    predictor: bytes | None  # the compiled predictor's stored form (None: reused version)
    trained: TrainedModel | None  # None: the reused version's
    fields: list[dict[str, Any]]  # the fields and labels the pipeline was trained with
    labels: list[str]
    profile: DataProfile | None
    oof: dict[str, list[Any]] | None
    seconds: float


def _fit(read: Read, job_id: str | None, use_families: tuple[str, ...]) -> Fitted:
    # scikit-learn, skops, pandas: loaded in the training job, never by a web process that
    # imports this module for lock_task.
    from service.ml.artifacts import dump_model, load_model
    from service.ml.pipeline import train_model

    started = time.perf_counter()
    data = read.data
    if read.reuse_id is None:
        _set_job(job_id, progress={"stage": "training", "cases": len(data.train_ids)})
        trained = train_model(
            data.train_rows,
            data.train_labels,
            read.fields,
            read.labels,
            families=use_families,
            hgb_max_iter=hgb_max_iter(),
        )
        return Fitted(
            pipeline=trained.pipeline,
            artefact=dump_model(trained.pipeline),
            # Compiled and checked here: not while the final transaction holds the task lock.
            predictor=stored_predictor(trained.pipeline, read.fields, read.labels),
            trained=trained,
            fields=read.fields,
            labels=read.labels,
            profile=build_profile(data.train_rows, read.fields),
            oof=readiness_sample(trained, data.train_representative, read.labels),
            seconds=time.perf_counter() - started,
        )
    with unit_of_work() as session:
        row = session.get(ModelVersion, read.reuse_id)
        assert row is not None and row.artefact is not None
        artefact = row.artefact
        stored = dict(row.profile or {})
    _release_connection()
    data_profile = stored.get("data")
    return Fitted(
        pipeline=load_model(artefact),
        artefact=artefact,
        predictor=None,
        trained=None,
        fields=stored.get("fields_spec") or read.fields,
        labels=stored.get("labels") or read.labels,
        profile=DataProfile.from_dict(data_profile) if data_profile else None,
        oof=stored.get("readiness"),
        seconds=time.perf_counter() - started,
    )


# ----------------------------------------------------------------------- 4. score


@dataclass
class Scored:
    evidence: automation.Evidence
    ledger_pred: list[str]
    reference: list[float]  # held-out score quantiles for the drift check
    reference_cases: int
    seconds: float


def _score(read: Read, fitted: Fitted, job_id: str | None) -> Scored:
    _set_job(job_id, progress={"stage": "certifying"})
    started = time.perf_counter()
    data = read.data
    ledger_scores, ledger_pred = _scores(
        fitted.pipeline, data.ledger_rows, fitted.fields, fitted.labels
    )
    recent_scores, recent_pred = _scores(
        fitted.pipeline, data.recent_rows, fitted.fields, fitted.labels
    )
    active_scores: np.ndarray | None = None
    active_pred: list[str] | None = None
    if read.active_id is not None and read.active_id != read.reuse_id:
        with unit_of_work() as session:
            act = session.get(ModelVersion, read.active_id)
            act_bytes = act.artefact if act is not None else None
            act_profile = dict(act.profile or {}) if act is not None else {}
        _release_connection()
        if act_bytes is not None:
            from service.ml.artifacts import load_model

            active_scores, active_pred = _scores(
                load_model(act_bytes),
                data.recent_rows,
                act_profile.get("fields_spec") or read.fields,
                act_profile.get("labels") or read.labels,
            )
    elif read.active_id is not None:
        active_scores, active_pred = recent_scores, recent_pred
    evidence = automation.Evidence(
        ledger_scores=ledger_scores,
        ledger_pred=ledger_pred,
        ledger_true=data.ledger_labels,
        recent_scores=recent_scores,
        recent_pred=recent_pred,
        active_recent_scores=active_scores,
        active_recent_pred=active_pred,
        ledger_blocked=blocked(data.ledger_rows, data.ledger_forced, fitted.profile),
        recent_blocked=blocked(data.recent_rows, data.recent_forced, fitted.profile),
        oof=fitted.oof,
    )
    # Held-out reference for the label-free drift check: the ledger is a uniform sample of
    # traffic the model never saw (recent traffic would include its own training cases).
    ref_src = ledger_scores[-REFERENCE_CASES:] if ledger_scores.size else recent_scores
    reference = (
        [float(x) for x in np.quantile(ref_src, (np.arange(REFERENCE_POINTS) + 0.5) / 200)]
        if ref_src.size
        else []
    )
    return Scored(
        evidence=evidence,
        ledger_pred=ledger_pred,
        reference=reference,
        reference_cases=int(ref_src.size),
        seconds=time.perf_counter() - started,
    )


# ----------------------------------------------------------------------- 5. record


def _record(
    task_id: int,
    job_id: str | None,
    read: Read,
    fitted: Fitted,
    scored: Scored,
    started: float,
) -> dict[str, Any]:
    data = read.data
    with unit_of_work() as session:
        task = lock_task(session, task_id)
        if task is None:
            raise LookupError(f"task {task_id} no longer exists")
        version: ModelVersion | None
        created = False
        if read.reuse_id is None:
            version = session.scalar(
                select(ModelVersion).where(
                    ModelVersion.task_id == task.id,
                    ModelVersion.training_snapshot["sha256"].as_string() == data.snapshot["sha256"],
                )
            )
            if version is None:
                version = _new_version(session, task, job_id, read, fitted, scored)
                created = True
        else:
            version = session.get(ModelVersion, read.reuse_id)
        assert version is not None
        outcome = automation.certify_version(session, task, version, scored.evidence)
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
        if outcome.attempted and not outcome.certified and not promoted:
            automation.explain_failed_attempt(task, version)
        result = {
            "outcome": "trained" if created else "reused",
            "version": version.version,
            "family": version.family,
            "training_cases": data.snapshot["cases"],
            "ledger_cases": data.labelled_ledger,
            "flagged_cases": int(scored.evidence.ledger_scores.size),
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
    return result


def _new_version(
    session: Session,
    task: Task,
    job_id: str | None,
    read: Read,
    fitted: Fitted,
    scored: Scored,
) -> ModelVersion:
    trained = fitted.trained
    assert trained is not None
    data = read.data
    number = (
        session.scalar(
            select(func.max(ModelVersion.version)).where(ModelVersion.task_id == task.id)
        )
        or 0
    ) + 1
    version = ModelVersion(
        task_id=task.id,
        version=number,
        status="candidate",
        family=trained.family,
        artefact=fitted.artefact,
        artefact_sha256=hashlib.sha256(fitted.artefact).hexdigest(),
        predictor=fitted.predictor,
        metrics=trained.metrics,
        training_snapshot=data.snapshot,
        profile={
            "fields_spec": read.fields,
            "labels": read.labels,
            "data": fitted.profile.to_dict() if fitted.profile is not None else None,
            "reference_scores": scored.reference,
            "reference_cases": scored.reference_cases,
            # The suggested labels on the same held-out cases, for the drift check's label
            # half (a class turning shows there before scores).
            "reference_label_counts": dict(Counter(scored.ledger_pred[-REFERENCE_CASES:])),
            "readiness": fitted.oof,
        },
        certification={},
        timings={
            **{k: round(v, 4) for k, v in trained.timings.items()},
            "train_job": round(fitted.seconds, 4),
            "scoring": round(scored.seconds, 4),
        },
        parent_id=task.active_model_id,
        job_id=job_id,
        trained_at=utcnow(),
    )
    session.add(version)
    session.flush()
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
            "metrics": {k: trained.metrics.get(k) for k in ("accuracy", "log_loss", "ece")},
            "job_id": job_id,
        },
    )
    return version
