"""Training on demand, job state, model list, promotion/rollback and role checks."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from service.models import ModelVersion, OutboxEntry
from service.services import training_run
from tests.helpers import SIMPLE_TASK, auth, make_token, synthetic_rows


def _review_audits(truth: dict[str, str]) -> None:
    """A reviewer gives the audited cases, which keep waiting for a person's verdict after
    the application's outcome (docs/api.md, "Outcomes"), the same true label."""
    import secrets

    from service.services import accounts, review
    from service.services.audit import SYSTEM
    from service.uow import unit_of_work

    with unit_of_work() as session:
        user = accounts.create_user(
            session,
            email=f"feed-{secrets.token_hex(4)}@example.com",
            password="long-enough-pw",
            role="reviewer",
            task_scope=None,
            actor=SYSTEM,
        )
        actor = accounts.user_actor(user)
        while (claimed := review.claim(session, "loan-review", actor)) is not None:
            review.submit_review(session, claimed.case.id, truth[claimed.case.id], actor)


def _feed(client: Any, app_token: str, n: int, seed: int) -> None:
    """The application reports every outcome, then a reviewer decides the audited cases."""
    rows, labels = synthetic_rows(n, seed=seed)
    truth: dict[str, str] = {}
    for start in range(0, n, 200):
        items = [{"input": r} for r in rows[start : start + 200]]
        resp = client.post(
            "/api/v1/tasks/loan-review/predict/batch",
            json={"items": items},
            headers=auth(app_token),
        )
        assert resp.status_code == 200, resp.json
        for result, label in zip(resp.json["results"], labels[start : start + 200], strict=True):
            truth[result["case_id"]] = label
            out = client.post(
                f"/api/v1/cases/{result['case_id']}/outcome",
                json={"label": label},
                headers=auth(app_token),
            )
            assert out.status_code == 200, out.json
    _review_audits(truth)


def test_train_activate_rollback_and_roles(
    flask_app: Any, committed_db: Any, monkeypatch: Any
) -> None:
    # The synthetic text field has ~10 distinct words: HGB's TF-IDF→SVD step fails on so small
    # a vocabulary (reported to the ML owner), so this test compares no families.
    monkeypatch.setenv("TANDEM_TRAIN_FAMILIES", "logistic_regression")
    client = flask_app.test_client()
    tok = {r: make_token(r) for r in ("app", "reviewer", "analyst", "admin")}
    body = {
        **SIMPLE_TASK,
        "policy": {
            "target_error": 0.1,
            "min_labels": 50,
            "retrain_every": 10_000,
            "max_coverage_step": 0.5,
            "cold_start_audit_rate": 0.55,
        },
    }
    assert client.post("/api/v1/tasks", json=body, headers=auth(tok["admin"])).status_code == 201
    _feed(client, tok["app"], 800, seed=1)

    for role in ("app", "reviewer", "analyst"):
        resp = client.post("/api/v1/tasks/loan-review/models/train", headers=auth(tok[role]))
        assert resp.status_code == 403, role
    first = client.post("/api/v1/tasks/loan-review/models/train", headers=auth(tok["admin"]))
    assert first.status_code == 202 and first.json["job_id"].startswith("train-task-")
    again = client.post("/api/v1/tasks/loan-review/models/train", headers=auth(tok["admin"]))
    assert again.json["job_id"] == first.json["job_id"]  # one job per task
    job_id = first.json["job_id"]
    n_outbox = committed_db.scalar(
        select(func.count()).select_from(OutboxEntry).where(OutboxEntry.job_id == job_id)
    )
    assert n_outbox == 1
    status = client.get("/api/v1/tasks/loan-review", headers=auth(tok["analyst"])).json
    assert status["training"] == {"state": "queued", "job_id": job_id}

    task_id = committed_db.scalar(select(ModelVersion.task_id).limit(1))  # none yet
    assert task_id is None
    from service.models import Task

    task_id = committed_db.scalar(select(Task.id).where(Task.name == "loan-review"))
    committed_db.remove()
    result = training_run.run_training(task_id, job_id)
    assert result["outcome"] == "trained" and result["version"] == 1
    # The job stored the compiled predictor the web processes score from (no scikit-learn).
    from service.ml.fast import load_predictor_state

    stored = committed_db.scalar(select(ModelVersion.predictor).where(ModelVersion.version == 1))
    assert stored is not None and load_predictor_state(stored).compiled

    assert client.get(f"/api/v1/jobs/{job_id}", headers=auth(tok["app"])).status_code == 403
    assert client.get(f"/api/v1/jobs/{job_id}", headers=auth(tok["reviewer"])).status_code == 403
    job = client.get(f"/api/v1/jobs/{job_id}", headers=auth(tok["analyst"])).json
    assert job["state"] == "finished" and job["attempts"] == 1 and job["result"]["version"] == 1
    assert client.get("/api/v1/jobs/nope", headers=auth(tok["admin"])).status_code == 404

    assert (
        client.get("/api/v1/tasks/loan-review/models", headers=auth(tok["app"])).status_code == 403
    )
    models = client.get("/api/v1/tasks/loan-review/models", headers=auth(tok["analyst"])).json
    (v1,) = models["models"]
    assert v1["version"] == 1 and v1["status"] == "active"
    assert v1["training_snapshot"]["cases"] > 300 and len(v1["training_snapshot"]["sha256"]) == 64
    assert v1["metrics"]["accuracy"] > 0.8 and v1["parent_version"] is None
    # 800 cases, ~55% flagged at cold start: a ledger of ~440 clears the first checkpoint (300).
    assert v1["certification"]["certified"], v1["certification"]
    status = client.get("/api/v1/tasks/loan-review", headers=auth(tok["analyst"])).json
    assert status["automation"]["state"] == "automating"
    assert status["automation"]["threshold"] == v1["threshold"]
    assert status["automation"]["coverage"] > 0

    # Same data again: idempotent, no duplicate version.
    again_result = training_run.run_training(task_id, None)
    assert again_result["outcome"] == "reused" and again_result["version"] == 1
    assert committed_db.scalar(select(func.count()).select_from(ModelVersion)) == 1

    # New labels → version 2 (parent 1); then roll back to 1 and forward again.
    _feed(client, tok["app"], 300, seed=2)
    r2 = training_run.run_training(task_id, None)
    assert r2["outcome"] == "trained" and r2["version"] == 2
    models = client.get("/api/v1/tasks/loan-review/models", headers=auth(tok["admin"])).json
    assert [m["version"] for m in models["models"]] == [2, 1]
    assert models["models"][0]["parent_version"] == 1

    url = "/api/v1/tasks/loan-review/models/{}/activate"
    assert client.post(url.format(1), headers=auth(tok["analyst"])).status_code == 403
    assert client.post(url.format(99), headers=auth(tok["admin"])).status_code == 404
    back = client.post(url.format(1), headers=auth(tok["admin"]))
    assert back.status_code == 200, back.json
    assert back.json["automation"]["model_version"] == 1
    assert back.json["automation"]["state"] == "automating"  # v1's stored certification
    assert back.json["automation"]["threshold"] == v1["threshold"]
    statuses = {
        m["version"]: m["status"]
        for m in client.get("/api/v1/tasks/loan-review/models", headers=auth(tok["admin"])).json[
            "models"
        ]
    }
    assert statuses[1] == "active" and statuses[2] != "active"
    fwd = client.post(url.format(2), headers=auth(tok["admin"]))
    assert fwd.status_code == 200 and fwd.json["automation"]["model_version"] == 2
