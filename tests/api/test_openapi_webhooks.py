"""The webhook payloads Tandem really records validate against the schemas the OpenAPI
document publishes for them (``x-webhooks`` and components; docs/webhooks.md, "Payload
schemas"): every event type, raised the way the product raises it."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import numpy as np
from sqlalchemy import insert, select

from service.models import Case, Task, WebhookDelivery, new_id
from service.services import automation
from service.services.audit import SYSTEM
from service.services.webhooks import EVENT_TYPES
from tests.helpers import (
    SIMPLE_TASK,
    auth,
    good_input,
    install_model,
    json_schema_of,
    synthetic_rows,
)

HOOK = {"url": "http://127.0.0.1:9/hook", "secret": "hook-secret"}


def _validator(spec: dict[str, Any], event: str) -> Any:
    body = spec["x-webhooks"][event]["post"]["requestBody"]["content"]["application/json"]
    document = {**body["schema"], "components": spec["components"]}
    return jsonschema_rs.validator_for(json_schema_of(document))


def _insert_cases(db: Any, task: Task, n: int, **values: Any) -> None:
    rows, _ = synthetic_rows(n, seed=7)
    db.execute(
        insert(Case),
        [
            {
                "id": new_id(),
                "task_id": task.id,
                "input": row,
                "route": "auto",
                "reason": "confident",
                "status": "auto",
                "suggestion_label": "good",
                "confidence": 0.99,
                "scores": {"good": 0.99, "bad": 0.01},
                "model_version_id": task.active_model_id,
                **values,
            }
            for row in rows
        ],
    )
    db.flush()


def test_every_recorded_payload_validates_against_its_published_schema(
    client: Any, tokens: dict[str, str], db: Any, redis_conn: Any
) -> None:
    admin, app = auth(tokens["admin"]), auth(tokens["app"])
    assert client.post("/api/v1/tasks", json={**SIMPLE_TASK, "webhook": HOOK}, headers=admin)
    name = SIMPLE_TASK["name"]
    task = db.scalar(select(Task).where(Task.name == name))
    install_model(db, name, threshold=0.5)
    install_model(db, name, threshold=0.5)

    # model.activated (and automation.changed): a rollback to version 1.
    resp = client.post(f"/api/v1/tasks/{name}/models/1/activate", headers=admin)
    assert resp.status_code == 200, resp.json
    # Automating again at a threshold, as a certified promotion would leave it.
    task.automation_state, task.threshold, task.coverage = "automating", 0.5, 0.5
    task.revision += 1
    db.commit()

    # case.resolved and case.corrected: the application's outcomes on a queued case and
    # against an automatic answer.
    queued = client.post(
        f"/api/v1/tasks/{name}/predict",
        json={"input": good_input(), "force_review": True},
        headers=app,
    ).json
    auto = client.post(f"/api/v1/tasks/{name}/predict", json={"input": good_input()}, headers=app)
    assert auto.status_code == 200, auto.json
    other = next(x for x in SIMPLE_TASK["labels"] if x != auto.json["label"])
    for case_id, label in ((queued["case_id"], "good"), (auto.json["case_id"], other)):
        resp = client.post(f"/api/v1/cases/{case_id}/outcome", json={"label": label}, headers=app)
        assert resp.status_code == 200, resp.json

    # drift.detected (label_free): the confidences collapse onto their top.
    version = task.active_model
    reference = sorted(float(x) for x in 0.5 + 0.5 * np.random.default_rng(0).random(200))
    version.profile = {**version.profile, "reference_scores": reference}
    _insert_cases(db, task, 200, route="review", reason="low_confidence", status="pending")
    assert automation.drift_check(db, task)["warnings"]

    # drift.detected (live_error) and automation.changed (fallback): audited automatic
    # answers that people overruled, seen by the live watch.
    _insert_cases(db, task, 40, audit=True, human_label="bad", human_labelled_at=None)
    db.execute(
        Case.__table__.update()
        .where(Case.task_id == task.id, Case.audit.is_(True))
        .values(human_labelled_at=Case.created_at)
    )
    automation.after_audited_label(db, task)
    assert task.automation_state == "fallback"

    # drift.detected (label_shift) through the same fallback path.
    automation.fall_back(
        db, task, SYSTEM, evidence={"label_psi": 0.4, "p_value": 1e-6, "n": 300}, kind="label_shift"
    )
    db.commit()

    spec = client.get("/api/v1/openapi.json").json
    deliveries = db.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
    assert {d.event_type for d in deliveries} == set(EVENT_TYPES)
    kinds = {d.payload["data"]["kind"] for d in deliveries if d.event_type == "drift.detected"}
    assert kinds == {"label_free", "live_error", "label_shift"}
    for delivery in deliveries:
        errors = [
            str(e) for e in _validator(spec, delivery.event_type).iter_errors(delivery.payload)
        ]
        assert not errors, (delivery.event_type, delivery.payload, errors)
        # The payload of another event type never passes for this one.
        for other_type in set(EVENT_TYPES) - {delivery.event_type}:
            assert not _validator(spec, other_type).is_valid(delivery.payload)
