"""One unit of work everywhere (docs/architecture.md, "One unit of work"): a job recorded by
a change is pushed to Redis only after that change has committed, from every entry point —
API request, review UI form post, CLI command, RQ job and the simulator. Each test makes the
commit of the change that recorded a job fail, and shows no job reached Redis (nor the
outbox); then lets the same change commit, and shows the job is in Redis at once."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from redis import Redis
from sqlalchemy import event, func, select, update
from sqlalchemy.orm import Session

from service.models import Case, Job, OutboxEntry
from service.services import outbox
from tests.helpers import SIMPLE_TASK, auth, good_input, install_model, make_token


class CommitRefused(RuntimeError):
    """The database refused the commit (a lost connection, a serialisation failure...)."""


@contextmanager
def commits_with_jobs_fail() -> Iterator[None]:
    """Every commit of a transaction that recorded a job fails, as late as it can."""

    def refuse(session: Session) -> None:
        if session.info.get(outbox.RECORDED):
            raise CommitRefused("commit refused")

    event.listen(Session, "before_commit", refuse)
    try:
        yield
    finally:
        event.remove(Session, "before_commit", refuse)


def rq_jobs(redis: Redis) -> list[str]:
    return sorted(k.decode() for k in redis.keys("rq:job:*"))


def outbox_entries(session: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(OutboxEntry)) or 0)


@pytest.fixture
def admin_token(committed_db: Any) -> str:
    return make_token("admin")


def _create_task(client: Any, token: str, **extra: Any) -> None:
    resp = client.post("/api/v1/tasks", json={**SIMPLE_TASK, **extra}, headers=auth(token))
    assert resp.status_code == 201, resp.json


def test_api_request(committed_db: Any, flask_app: Any, redis_conn: Redis, admin_token: str):
    client = flask_app.test_client()
    _create_task(client, admin_token)
    url = "/api/v1/tasks/loan-review/models/train"
    with commits_with_jobs_fail(), pytest.raises(CommitRefused):
        client.post(url, headers=auth(admin_token))
    assert rq_jobs(redis_conn) == []
    assert outbox_entries(committed_db()) == 0
    assert committed_db().scalar(select(func.count()).select_from(Job)) == 0

    resp = client.post(url, headers=auth(admin_token))
    assert resp.status_code == 202, resp.json
    assert rq_jobs(redis_conn) == [f"rq:job:{resp.json['job_id']}"]


def test_ui_form_post(committed_db: Any, flask_app: Any, redis_conn: Redis, admin_token: str):
    """A policy edit that stops automation announces it by webhook: a delivery job."""
    from service.uow import unit_of_work
    from tests.review.conftest import login, make_user

    client = flask_app.test_client()
    _create_task(
        client, admin_token, webhook={"url": "http://127.0.0.1:9/hook", "secret": "s3cret-v"}
    )
    install_model(committed_db(), "loan-review", threshold=0.8, state="automating")
    with unit_of_work() as session:
        admin = make_user(session, "admin")
    headers = login(client, admin.email)
    form = {"target_error": "0.01"}
    url = "/admin/tasks/loan-review/policy"
    with commits_with_jobs_fail(), pytest.raises(CommitRefused):
        client.post(url, data=form, headers=headers)
    assert rq_jobs(redis_conn) == []
    assert outbox_entries(committed_db()) == 0

    resp = client.post(url, data=form, headers=headers)
    assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
    assert [k for k in rq_jobs(redis_conn) if k.startswith("rq:job:webhook-")]


def test_cli_command(
    committed_db: Any,
    flask_app: Any,
    redis_conn: Redis,
    admin_token: str,
    settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    from click.testing import CliRunner

    from tandem.cli import main

    _create_task(flask_app.test_client(), admin_token)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", str(settings.redis_url))
    monkeypatch.setenv("SECRET_KEY", "cli-test")
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))
    with commits_with_jobs_fail():
        refused = CliRunner().invoke(main, ["train", "loan-review"])
    assert refused.exit_code != 0 and "commit refused" in refused.output, refused.output
    assert rq_jobs(redis_conn) == []
    assert outbox_entries(committed_db()) == 0

    done = CliRunner().invoke(main, ["train", "loan-review"])
    assert done.exit_code == 0, done.output
    assert rq_jobs(redis_conn) == ["rq:job:" + done.output.strip().splitlines()[-1]]


def test_job(committed_db: Any, flask_app: Any, redis_conn: Redis, admin_token: str):
    """The periodic retrain trigger requests training for a task with labels and no model."""
    from service.uow import unit_of_work
    from workers.context import set_app
    from workers.jobs.maintenance import retrain_check

    client = flask_app.test_client()
    _create_task(client, admin_token)
    resp = client.post(
        "/api/v1/tasks/loan-review/predict",
        json={"input": good_input()},
        headers=auth(make_token("app")),
    )
    assert resp.status_code == 202, resp.json  # no model yet: queued for review
    with unit_of_work() as session:
        session.execute(update(Case).values(human_label="good", human_labelled_at=Case.created_at))
    set_app(flask_app)
    with commits_with_jobs_fail(), pytest.raises(CommitRefused):
        retrain_check()
    assert rq_jobs(redis_conn) == []
    assert outbox_entries(committed_db()) == 0

    assert retrain_check() == ["loan-review"]
    task_id = committed_db().scalar(select(Case.task_id))
    assert rq_jobs(redis_conn) == [f"rq:job:train-task-{task_id}"]


def _tiny_csv(path: Path) -> None:
    rng = np.random.default_rng(0)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["signal", "label"])
        for _ in range(12):
            positive = bool(rng.random() < 0.5)
            writer.writerow([f"{1.0 if positive else -1.0:.2f}", "pos" if positive else "neg"])


def test_simulate(backend: str, settings: Any, tmp_path: Path):
    """The simulator's reviewer labels cases; the tenth (``retrain_every: 10``) requests
    training."""
    from service.redis_conn import get_redis
    from service.uow import unit_of_work
    from tandem.simulate.data import load_dataset
    from tandem.simulate.engine import Replay, SimOptions, isolated_instance

    data = tmp_path / "tiny.csv"
    _tiny_csv(data)
    dataset = load_dataset(data, "label", task={"policy": {"retrain_every": 10}})
    database_url = settings.database_url if backend == "postgresql" else None
    with isolated_instance(tmp_path / "sim", database_url) as sim_app:
        replay = Replay(sim_app, dataset, SimOptions(chunk=10, progress=False))
        redis = get_redis(sim_app)
        with sim_app.app_context():
            replay._setup()
            replay._predict(np.arange(10), 0)  # no model: all go to review
            with commits_with_jobs_fail(), pytest.raises(CommitRefused):
                replay._review_queue(0)
            assert rq_jobs(redis) == []
            with unit_of_work() as session:
                assert outbox_entries(session) == 0

            replay._review_queue(0)
            assert rq_jobs(redis) == [f"rq:job:train-task-{replay.task_id}"]
