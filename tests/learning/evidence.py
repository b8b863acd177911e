"""Synthetic evidence for certify_version / promote tests: a task made through the API,
labelled cases stored directly, candidate versions, and ledger/recent score arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import insert, select

from service.models import Case, ModelVersion, Task, new_id
from service.services import automation
from tests.helpers import SIMPLE_TASK, auth


def make_task(client: Any, admin: str, **policy: Any) -> Task:
    body = {**SIMPLE_TASK, "policy": {"target_error": 0.05, "min_labels": 50, **policy}}
    resp = client.post("/api/v1/tasks", json=body, headers=auth(admin))
    assert resp.status_code == 201, resp.json
    from service.db import db_session

    return db_session.scalar(select(Task).where(Task.name == body["name"]))


def labelled_cases(session: Any, task: Task, n: int) -> None:
    rows = [
        {
            "id": new_id(),
            "task_id": task.id,
            "input": {"review": "x", "state": "CA"},
            "route": "review",
            "reason": "cold_start",
            "status": "resolved",
            "audit": i % 3 == 0,
            "human_label": "good",
            "final_label": "good",
            "label_source": "reviewer",
        }
        for i in range(n)
    ]
    session.execute(insert(Case), rows)
    session.flush()


def version(session: Any, task: Task, number: int = 1) -> ModelVersion:
    v = ModelVersion(
        task_id=task.id,
        version=number,
        status="candidate",
        family="logistic_regression",
        artefact=b"x",
        artefact_sha256="0" * 64,
        certification={},
    )
    session.add(v)
    session.flush()
    return v


def evidence(n: int, err_scale: float, seed: int = 0, n_recent: int = 2000) -> automation.Evidence:
    """Scores 0.5 + 0.5·U; P(error | s) = err_scale · 2(1 − s) (lower error at high scores)."""
    rng = np.random.default_rng(seed)
    s = 0.5 + 0.5 * rng.random(n)
    wrong = rng.random(n) < err_scale * 2 * (1 - s)
    pred = ["good"] * n
    true = ["bad" if w else "good" for w in wrong]
    recent = 0.5 + 0.5 * rng.random(n_recent)
    return automation.Evidence(
        ledger_scores=s,
        ledger_pred=pred,
        ledger_true=true,
        recent_scores=recent,
        recent_pred=["good"] * n_recent,
    )
