"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit


def make_token(role: str, tasks: list[str] | None = None, name: str | None = None) -> str:
    from service.services.accounts import create_token
    from service.services.audit import SYSTEM
    from service.uow import unit_of_work

    with unit_of_work() as session:
        return create_token(
            session, role=role, name=name or f"test-{role}", task_scope=tasks, actor=SYSTEM
        ).token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


SIMPLE_TASK: dict[str, Any] = {
    "name": "loan-review",
    "labels": ["good", "bad"],
    "fields": [
        {"name": "review", "type": "text"},
        {"name": "state", "type": "category"},
        {"name": "amount", "type": "number", "required": False},
        {"name": "verified", "type": "boolean", "required": False},
    ],
}


def good_input(**overrides: Any) -> dict[str, Any]:
    values = {
        "review": "Paid back on time, stable job.",
        "state": "CA",
        "amount": 1200.5,
        "verified": True,
    }
    values.update(overrides)
    return values


def synthetic_rows(n: int = 300, seed: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows for SIMPLE_TASK where the label is (almost) a function of the inputs."""
    import random

    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    labels: list[str] = []
    for _ in range(n):
        good = rng.random() < 0.5
        rows.append(
            {
                "review": rng.choice(["paid on time", "stable job, paid back"])
                if good
                else rng.choice(["defaulted twice", "missed payments, default"]),
                "state": rng.choice(["CA", "OR"]) if good else rng.choice(["NY", "NJ"]),
                "amount": rng.uniform(100, 1000) if good else rng.uniform(5000, 9000),
                "verified": good if rng.random() < 0.9 else None,
            }
        )
        labels.append("good" if good else "bad")
    return rows, labels


def install_model(
    session: Any,
    task_name: str,
    *,
    threshold: float | None,
    state: str = "automating",
    rows: list[dict[str, Any]] | None = None,
    labels: list[str] | None = None,
    label_thresholds: dict[str, float] | None = None,
    stored_predictor: bool = True,
) -> Any:
    """Train a real (small) model and make it the task's active version, as a promotion
    would. Test-only shortcut around the training job. The version carries the compiled
    predictor's stored form as the training job writes it (``stored_predictor=False``: an
    older version without one, compiled from its artefact when first used)."""
    import hashlib

    from sqlalchemy import select

    from service.ml.artifacts import dump_model
    from service.ml.pipeline import train_model
    from service.ml.profile import build_profile
    from service.models import ModelVersion, Task
    from service.services.training_run import stored_predictor as stored_form

    task = session.scalar(select(Task).where(Task.name == task_name))
    if rows is None or labels is None:
        rows, labels = synthetic_rows()
    trained = train_model(rows, labels, task.fields, task.labels, families=("logistic_regression",))
    artefact = dump_model(trained.pipeline)
    version = ModelVersion(
        task_id=task.id,
        version=1
        + len(session.scalars(select(ModelVersion).where(ModelVersion.task_id == task.id)).all()),
        status="active",
        family=trained.family,
        artefact=artefact,
        artefact_sha256=hashlib.sha256(artefact).hexdigest(),
        predictor=(
            stored_form(trained.pipeline, task.fields, task.labels) if stored_predictor else None
        ),
        metrics=trained.metrics,
        profile={
            "fields_spec": task.fields,
            "labels": task.labels,
            "data": build_profile(rows, task.fields).to_dict(),
        },
        certification={"label_thresholds": label_thresholds or {}},
        threshold=threshold,
    )
    session.add(version)
    session.flush()
    task.active_model_id = version.id
    task.threshold = threshold
    task.automation_state = state
    task.coverage = 0.5 if state == "automating" else 0.0
    task.revision += 1
    session.commit()
    return version


def redis_servers_under(root: Path) -> list[Any]:
    """Running redis-server processes whose working directory is under ``root`` (an embedded
    Redis runs in its data folder): what a stopped instance must not leave behind."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name", "cwd"]):
        cwd = proc.info.get("cwd") or ""
        if "redis-server" in (proc.info.get("name") or "") and cwd.startswith(str(root)):
            found.append(proc)
    return found


def json_schema_of(node: Any) -> Any:
    """An OpenAPI 3.0 schema as plain JSON Schema: ``nullable: true`` becomes null allowed
    (the one 3.0 keyword a JSON Schema validator would silently ignore)."""
    if isinstance(node, list):
        return [json_schema_of(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: json_schema_of(value) for key, value in node.items() if key != "nullable"}
    if not node.get("nullable"):
        return converted
    if isinstance(converted.get("type"), str):
        return {**converted, "type": [converted["type"], "null"]}
    return {"anyOf": [converted, {"type": "null"}]}


def stop_process(proc: Any, timeout: float = 30) -> None:
    """SIGTERM a process a test started, then SIGKILL it if it does not stop in time."""
    import signal
    import subprocess

    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def xdist_worker_number(worker: str) -> int | None:
    """The number of a pytest-xdist worker id (``gw1`` -> 1); None in a serial run (``""``)."""
    if not worker:
        return None
    if not worker.startswith("gw") or not worker[2:].isdigit():
        raise ValueError(f"unexpected pytest-xdist worker id {worker!r} (expected gw0, gw1, ...)")
    return int(worker[2:])


def worker_database_url(url: str, worker: str) -> str:
    """The PostgreSQL database of one xdist worker: the configured name plus ``_gwN``.

    The session fixtures drop and recreate the schema of the test database, so two workers
    (or two developers) sharing one database would destroy each other's data mid-test."""
    from sqlalchemy.engine import make_url

    if xdist_worker_number(worker) is None:
        return url
    target = make_url(url)
    if not target.database:
        raise ValueError(f"TANDEM_TEST_DATABASE_URL {url!r} names no database")
    return target.set(database=f"{target.database}_{worker}").render_as_string(hide_password=False)


def worker_redis_url(url: str, worker: str) -> str:
    """The Redis database of one xdist worker: the configured index minus the worker number
    (15, 14, ... by default), as tests flush their Redis database before and after use."""
    number = xdist_worker_number(worker)
    if number is None:
        return url
    parts = urlsplit(url)
    if "db" in parse_qs(parts.query):
        raise ValueError(f"TANDEM_TEST_REDIS_URL {url!r}: give the database index in the path")
    base = parts.path.strip("/") or "0"
    if not base.isdigit():
        raise ValueError(f"TANDEM_TEST_REDIS_URL {url!r}: the path must be a database index")
    index = int(base) - number
    if index < 0:
        raise ValueError(
            f"TANDEM_TEST_REDIS_URL {url!r}: worker {worker} would need Redis database {index};"
            f" use a base index of at least {number}"
        )
    return urlunsplit(parts._replace(path=f"/{index}"))


def audited_auto_answer() -> dict[str, Any]:
    """The columns predict stores for a confident case drawn for audit (audit_mode answer):
    answered by the model and waiting in the queue for its blind audit review."""
    from service.db import utcnow

    return {
        "audit": True,
        "status": "auto",
        "route": "auto",
        "reason": "confident",
        "suggestion_label": "good",
        "confidence": 0.97,
        "scores": {"good": 0.97, "bad": 0.03},
        "model_version": 1,
        "threshold": 0.9,
        "final_label": "good",
        "label_source": "model",
        "resolved_at": utcnow(),
    }


def set_on_policy_page(
    client: Any,
    headers: dict[str, str],
    db: Any,
    task_name: str,
    field: str,
    *,
    bad: str,
    good: str,
    stored: Any,
) -> None:
    """An admin's policy page shows ``field``, refuses ``bad`` with a field error, saves
    ``good`` (stored as ``stored``) and leaves a ``task.changed`` audit event saying so."""
    from sqlalchemy import select

    from service.models import AuditEvent, Task

    url = f"/admin/tasks/{task_name}/policy"
    assert f'id="{field}"' in client.get(url).get_data(as_text=True)
    token = headers["X-CSRFToken"]
    refused = client.post(url, data={field: bad, "csrf_token": token})
    assert refused.status_code == 200 and "field-error" in refused.get_data(as_text=True)
    saved = client.post(url, data={field: good, "csrf_token": token})
    assert saved.status_code == 302
    db.expire_all()
    row = db.scalar(select(Task).where(Task.name == task_name))
    assert row.policy[field] == stored
    changed = db.scalars(select(AuditEvent).where(AuditEvent.action == "task.changed")).all()
    assert changed[-1].details["after"]["policy"][field] == stored
