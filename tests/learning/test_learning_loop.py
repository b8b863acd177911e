"""The learning loop end to end with a REAL RQ worker process on the real Redis.

Cases are replayed through the HTTP API (Flask test client on the same database the worker
uses): the application reports the true label of every queued case as its outcome (a valid
human label source), and a simulated reviewer answers, through the review queue, every case
still waiting after that: the audited ones, whose label is a person's verdict and never the
application's outcome (docs/api.md, "Outcomes"). Training jobs are triggered by
``retrain_every`` and run by the worker; the replay waits for a queued job before sending the
next batch, as a slow stream would.

Case ids come from a seeded source (``service.models.seeded_ids``, as ``tandem simulate``
makes them): the audit draw hashes the case id, so with fresh random ids every run audited
other cases, and the credit replay failed to start automation in about one CI run in six
(docs/policy.md, "Audit draw"). With these ids a replay audits the same cases every run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select

from service.models import Case, Job, ModelVersion, Task, id_source, seeded_ids
from service.policy import clopper_pearson_lower
from tandem.demo import CREDIT_FIELDS, read_rows
from tests.conftest import backend_env
from tests.helpers import auth, make_token, stop_process

# Real worker processes and several trainings per replay: minutes, more on a loaded machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

FOODS_FIELDS = [
    {"name": "review", "type": "text"},
    {"name": "product", "type": "category"},
]


@pytest.fixture
def start_worker(committed_db: Any, redis_conn: Any, settings: Any) -> Iterator[Any]:
    """Start ``tandem worker`` in its own process (not burst: RQ's scheduler must re-queue a
    retried job), with a small boosting budget so a replay stays within minutes on 2 cores.
    """
    procs: list[subprocess.Popen[bytes]] = []

    def start(**extra_env: str) -> subprocess.Popen[bytes]:
        env = {
            **backend_env(settings),
            "TANDEM_HGB_MAX_ITER": "40",
            **extra_env,
        }
        cmd = [sys.executable, "-m", "tandem.cli", "worker", "--queues", "training"]
        proc = subprocess.Popen(
            [*cmd, "--no-scheduler"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc, timeout=20)


def _job_row(session: Any, task_name: str) -> Job | None:
    session.remove()
    task_id = session.scalar(select(Task.id).where(Task.name == task_name))
    job = session.scalar(select(Job).where(Job.task_id == task_id, Job.kind == "train"))
    # End the read before the caller sleeps: on SQLite an open transaction holds the write
    # lock (BEGIN IMMEDIATE), and a poll that never lets go starves the worker's writes.
    session.remove()
    return job


def wait_training(session: Any, task_name: str, timeout: float = 900) -> Job | None:
    """Block while the task's training job is queued or running; fail on a failed job."""
    deadline = time.monotonic() + timeout
    while True:
        job = _job_row(session, task_name)
        if job is None or job.state == "finished":
            return job
        assert job.state != "failed", job.error
        assert time.monotonic() < deadline, f"training still {job.state}"
        time.sleep(0.2)


@dataclass
class Replay:
    auto_per_batch: list[float] = field(default_factory=list)
    labels_before_batch: list[int] = field(default_factory=list)
    auto_total: int = 0
    auto_wrong: int = 0
    audited_auto_labelled: int = 0
    first_fallback_after_flip: int | None = None


def _reviewer_token(task_name: str) -> str:
    """A token bound to a new reviewer account (reviews are decisions of people)."""
    import secrets

    from service.services import accounts
    from service.services.audit import SYSTEM
    from service.uow import unit_of_work

    email = f"replay-{secrets.token_hex(4)}@example.com"
    with unit_of_work() as session:
        accounts.create_user(
            session,
            email=email,
            password=secrets.token_urlsafe(16),
            role="reviewer",
            task_scope=None,
            actor=SYSTEM,
        )
        return accounts.create_token(
            session,
            role="reviewer",
            name=f"replay-{task_name}",
            task_scope=None,
            actor=SYSTEM,
            user_email=email,
        ).token


def _human_labels(session: Any, task_name: str) -> int:
    session.remove()
    n = session.scalar(
        select(func.count())
        .select_from(Case)
        .join(Task, Task.id == Case.task_id)
        .where(Task.name == task_name, Case.human_label.is_not(None))
    )
    session.remove()  # SQLite: release the read before the worker writes
    return int(n or 0)


def replay(
    client: Any,
    session: Any,
    token: str,
    task_name: str,
    rows: list[tuple[dict[str, Any], str]],
    *,
    batch: int = 100,
    flip_after: int | None = None,
    flip: dict[str, str] | None = None,
    ids: Callable[[], str] | None = None,
) -> Replay:
    """Replay ``rows``; ``ids`` makes the case ids (one seeded source for every replay of a
    task, so its ids never repeat)."""
    with id_source(ids or seeded_ids(7)):
        return _replay(client, session, token, task_name, rows, batch, flip_after, flip)


def _replay(
    client: Any,
    session: Any,
    token: str,
    task_name: str,
    rows: list[tuple[dict[str, Any], str]],
    batch: int,
    flip_after: int | None,
    flip: dict[str, str] | None,
) -> Replay:
    out = Replay()
    reviewer = _reviewer_token(task_name)
    for start in range(0, len(rows), batch):
        wait_training(session, task_name)
        chunk = rows[start : start + batch]
        resp = client.post(
            f"/api/v1/tasks/{task_name}/predict/batch",
            json={"items": [{"input": values} for values, _ in chunk]},
            headers=auth(token),
        )
        assert resp.status_code == 200, resp.json
        out.labels_before_batch.append(_human_labels(session, task_name))
        n_auto = 0
        truths: dict[str, tuple[str, bool, str]] = {}
        for i, (result, (_, truth)) in enumerate(zip(resp.json["results"], chunk, strict=True)):
            drifted = flip_after is not None and start + i >= flip_after
            if drifted and flip:
                truth = flip[truth]
            truths[result["case_id"]] = (truth, drifted, result["route"])
            if result["route"] == "auto":
                n_auto += 1
                if not drifted:
                    out.auto_total += 1
                    out.auto_wrong += int(result["label"] != truth)
            else:
                done = client.post(
                    f"/api/v1/cases/{result['case_id']}/outcome",
                    json={"label": truth},
                    headers=auth(token),
                )
                assert done.status_code == 200, done.json
        # The reviewer decides what still waits: the audited cases of this batch.
        while True:
            claimed = client.post(f"/api/v1/tasks/{task_name}/queue/claim", headers=auth(reviewer))
            if claimed.status_code == 204:
                break
            assert claimed.status_code == 200, claimed.json
            case_id = claimed.json["case_id"]
            truth, drifted, route = truths[case_id]
            done = client.post(
                f"/api/v1/cases/{case_id}/review", json={"label": truth}, headers=auth(reviewer)
            )
            assert done.status_code == 200, done.json
            if route != "auto":
                continue
            out.audited_auto_labelled += 1
            if drifted and out.first_fallback_after_flip is None:
                state = client.get(f"/api/v1/tasks/{task_name}", headers=auth(token))
                if state.json["automation"]["state"] == "fallback":
                    out.first_fallback_after_flip = out.audited_auto_labelled
        out.auto_per_batch.append(n_auto / len(chunk))
    wait_training(session, task_name)
    return out


def _create(client: Any, admin: str, name: str, labels: list[str], fields: Any, **policy: Any):
    body = {"name": name, "labels": labels, "fields": fields, "policy": policy}
    resp = client.post("/api/v1/tasks", json=body, headers=auth(admin))
    assert resp.status_code == 201, resp.json


def _check_promise(result: Replay, target: float, min_labels: int) -> None:
    # Automation starts at zero and never before min_labels human labels.
    assert result.auto_per_batch[0] == 0.0
    for share, given in zip(result.auto_per_batch, result.labels_before_batch, strict=True):
        if given < min_labels:
            assert share == 0.0
    assert result.auto_total > 0, "automation never started"
    assert max(result.auto_per_batch) > 0.0
    realised = result.auto_wrong / result.auto_total
    assert realised <= target, (realised, result.auto_total)


def test_credit_replay_real_worker(flask_app: Any, committed_db: Any, start_worker: Any) -> None:
    """credit_data at α = 0.15 (why not 0.05-0.10: docs/learning.md, "Choosing the target").

    An attempt is made only when the model's out-of-fold predictions say it will likely pass
    (docs/policy.md, "Readiness"), and each attempt spends the next slice (δ/2, δ/4, …), so
    the model needs to be well under α on a confident region; on credit it has ~4.5% on its
    most confident quarter, which passes 0.10 only on a ledger of several hundred cases and
    0.05 never (docs/backtest.md). Logistic
    regression only: it wins the CV comparison on credit (log loss 0.44 vs 0.53), and the
    family choice itself is tested in tests/ml.
    """
    start_worker(TANDEM_TRAIN_FAMILIES="logistic_regression")
    client = flask_app.test_client()
    admin, app_token = make_token("admin"), make_token("app")
    target = 0.15
    _create(
        client,
        admin,
        "credit",
        ["good", "bad"],
        CREDIT_FIELDS,
        target_error=target,
        min_labels=200,
        retrain_every=400,
    )
    rows = read_rows("credit_data.csv", "Status", CREDIT_FIELDS)
    random.Random(7).shuffle(rows)
    # 4,000 cases: with random case ids (before the seeded ids) automation had not started
    # on 2,400 in one of six runs (CI, both backends), and on 3,200 once more.
    result = replay(client, committed_db, app_token, "credit", rows[:4000], batch=200)
    _check_promise(result, target, 200)
    committed_db.remove()
    versions = committed_db.scalars(select(ModelVersion)).all()
    assert len(versions) >= 3
    assert sum(v.status == "active" for v in versions) == 1
    assert any((v.certification or {}).get("certified") for v in versions)
    print("credit", result.auto_total, result.auto_wrong, result.auto_per_batch)


def test_fine_foods_replay_real_worker(
    flask_app: Any, committed_db: Any, start_worker: Any
) -> None:
    """fine_foods (text) at α = 0.20, all 5,000 rows shuffled: trained on 1,000-2,000 reviews,
    logistic regression on TF-IDF is wrong on 7-10% of its most confident quarter (measured
    in this replay and the backtest, docs/backtest.md). The promise bounds the deployed
    rule's true error; the realised error of a few hundred automatic answers scatters around
    it (±1.6 points at 600 answers and 20%). This test asserts the realised error itself, so
    it certifies with the margin docs/policy.md offers for exactly that (`certification_margin`
    0.02: certify at 18%). A larger margin (0.05) made certification itself a coin toss on
    4,000 rows: the audit sample is drawn from random case ids, and one CI run never
    certified at 15% (the backtest at 15% certifies at the first checkpoint in 1 of 10
    runs). All 5,000 rows let the third checkpoint (1,200 audited cases) come in time too.
    Logistic regression only: boosting on 100 SVD components of the TF-IDF costs ~60 s per
    training on 2 cores and does not win here (CV log loss 0.528 vs 0.532)."""
    start_worker(TANDEM_TRAIN_FAMILIES="logistic_regression")
    client = flask_app.test_client()
    admin, app_token = make_token("admin"), make_token("app")
    target = 0.20
    _create(
        client,
        admin,
        "foods",
        ["great", "other"],
        FOODS_FIELDS,
        target_error=target,
        certification_margin=0.02,
        min_labels=200,
        retrain_every=500,
    )
    rows = read_rows("fine_foods.csv", "score", FOODS_FIELDS)
    random.Random(11).shuffle(rows)
    result = replay(client, committed_db, app_token, "foods", rows, batch=250)
    committed_db.remove()
    story = [
        (
            v.version,
            v.coverage,
            {
                k: (v.certification or {}).get(k)
                for k in ("ledger_cases", "allowed_coverage", "decision")
            },
            ((v.certification or {}).get("groups") or {}).get("*", {}).get("steps", [])[:3],
        )
        for v in committed_db.scalars(select(ModelVersion)).all()
    ]
    assert result.auto_total > 0, story
    _check_promise(result, target, 200)
    print("foods", result.auto_total, result.auto_wrong, result.auto_per_batch)


def test_label_flip_falls_back_within_bound(
    flask_app: Any, committed_db: Any, start_worker: Any
) -> None:
    """After automation starts, labels flip (the world changed). The live watch must fall
    back within the number of audited automatic answers the exact test needs: with m
    correct audited answers already in the window and every new one wrong, the first k with
    a one-sided Clopper-Pearson lower bound above α at the watch's confidence (computed
    below; ≤ 30 here)."""
    from tests.helpers import SIMPLE_TASK, synthetic_rows

    start_worker(TANDEM_TRAIN_FAMILIES="logistic_regression")  # tiny text vocabulary
    client = flask_app.test_client()
    admin, app_token = make_token("admin"), make_token("app")
    target = 0.10
    _create(
        client,
        admin,
        "flip",
        ["good", "bad"],
        SIMPLE_TASK["fields"],
        target_error=target,
        min_labels=100,
        retrain_every=300,
        max_coverage_step=0.5,
        cold_start_audit_rate=0.5,  # the first checkpoint (300 ledger cases) by case ~600
    )
    xs, ys = synthetic_rows(2400, seed=11)
    rows = list(zip(xs, ys, strict=True))
    ids = seeded_ids(11)
    first = replay(client, committed_db, app_token, "flip", rows[:1200], batch=150, ids=ids)
    assert first.auto_total > 0
    status = client.get("/api/v1/tasks/flip", headers=auth(admin)).json
    assert status["automation"]["state"] == "automating"
    audited_before = first.audited_auto_labelled
    m = min(audited_before, 300)
    watch = status["policy"]["watch_confidence"]  # the watch's own test (0.99, new tasks)
    assert watch == 0.99
    bound = next(k for k in range(1, 301) if clopper_pearson_lower(k, m + k, watch) > target)
    assert bound <= 30
    second = replay(
        client,
        committed_db,
        app_token,
        "flip",
        rows[1200:],
        batch=150,
        flip_after=0,
        flip={"good": "bad", "bad": "good"},
        ids=ids,
    )
    assert second.first_fallback_after_flip is not None, "never fell back"
    assert second.first_fallback_after_flip <= bound, (second.first_fallback_after_flip, bound)
    status = client.get("/api/v1/tasks/flip", headers=auth(admin)).json
    assert status["automation"]["state"] in ("fallback", "automating")
    committed_db.remove()
    from service.models import AuditEvent

    assert (
        committed_db.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "automation.fallback")
        )
        >= 1
    )


def test_sigkill_mid_training_is_retried(
    flask_app: Any, committed_db: Any, start_worker: Any
) -> None:
    start_worker()
    client = flask_app.test_client()
    admin, app_token = make_token("admin"), make_token("app")
    _create(
        client,
        admin,
        "kill",
        ["good", "bad"],
        CREDIT_FIELDS,
        target_error=0.10,
        min_labels=200,
        retrain_every=100_000,
    )
    rows = read_rows("credit_data.csv", "Status", CREDIT_FIELDS)[:1500]
    replay(client, committed_db, app_token, "kill", rows, batch=500)
    resp = client.post("/api/v1/tasks/kill/models/train", headers=auth(admin))
    assert resp.status_code == 202
    job_id = resp.json["job_id"]
    deadline = time.monotonic() + 600  # worker start-up and data reading
    pid = None
    while time.monotonic() < deadline:
        job = _job_row(committed_db, "kill")
        if job is not None and (job.progress or {}).get("stage") == "training":
            pid = job.progress["pid"]
            break
        time.sleep(0.05)
    assert pid is not None, "training never started"
    os.kill(pid, signal.SIGKILL)
    committed_db.remove()
    assert committed_db.scalar(select(func.count()).select_from(ModelVersion)) == 0
    # RQ's Retry re-runs the job (first interval 10 s); nothing half-done was ever stored.
    seen_versions: set[tuple[int, str]] = set()
    deadline = time.monotonic() + 900
    while True:
        job = _job_row(committed_db, "kill")
        for v in committed_db.scalars(select(ModelVersion)).all():
            assert v.artefact_sha256 is not None and v.status in ("candidate", "active")
            seen_versions.add((v.version, v.status))
        committed_db.remove()  # SQLite: release the write lock while the worker runs
        if job is not None and job.state == "finished":
            break
        assert job is None or job.state != "failed", job.error
        assert time.monotonic() < deadline, "retried job did not finish"
        time.sleep(0.3)
    assert job.id == job_id and job.attempts == 2
    assert job.result["version"] == 1
    committed_db.remove()
    (version,) = committed_db.scalars(select(ModelVersion)).all()
    task = committed_db.scalar(select(Task).where(Task.name == "kill"))
    assert task.active_model_id == version.id and version.status == "active"
    import hashlib

    assert hashlib.sha256(version.artefact).hexdigest() == version.artefact_sha256
