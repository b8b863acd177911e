"""The predict endpoint and its router: cold start, automation, audit, forced review,
idempotency, batches, the case read-back and late outcomes."""

from __future__ import annotations

import threading
from typing import Any

import jsonschema_rs
import pytest
from sqlalchemy import func, select

from service.models import AuditEvent, Case
from service.policy import audit_draw
from tests.helpers import auth, good_input, install_model, json_schema_of, make_token


def predict(client: Any, token: str, body: dict[str, Any], **headers: str) -> Any:
    return client.post(
        "/api/v1/tasks/loan-review/predict", json=body, headers={**auth(token), **headers}
    )


def test_cold_start_queues_every_case(client, tokens, task, db):
    resp = predict(client, tokens["app"], {"input": good_input(), "external_id": "A-1"})
    assert resp.status_code == 202
    body = resp.json
    assert body["status"] == "pending"
    assert body["route"] == "review"
    assert body["reason"] == "cold_start"
    assert body["label"] is None
    assert body["suggestion"] is None
    assert body["model_version"] is None
    assert body["external_id"] == "A-1"
    assert body["created_at"].endswith("Z")
    case = db.get(Case, body["case_id"])
    assert case.queue_state == "waiting"
    assert case.label_probability == 1.0


def test_audit_flag_is_deterministic_hash_of_case_id(client, tokens, task, db):
    for _ in range(40):
        predict(client, tokens["app"], {"input": good_input()})
    cases = db.scalars(select(Case)).all()
    assert len(cases) == 40
    for case in cases:
        # cold start flag rate (0.3) stored with the case; flag = hash(case id) < rate
        assert case.audit == (audit_draw(case.id) < case.audit_rate)
        assert case.audit_rate == pytest.approx(0.3)
    assert 0 < sum(c.audit for c in cases) < 40


def test_active_model_answers_confident_cases_and_queues_the_rest(client, tokens, task, db):
    install_model(db, "loan-review", threshold=0.8)
    confident = predict(client, tokens["app"], {"input": good_input(review="paid on time")})
    assert confident.json["suggestion"]["label"] == "good"
    assert confident.json["suggestion"]["confidence"] >= 0.8
    assert set(confident.json["suggestion"]["scores"]) == {"good", "bad"}
    assert confident.status_code == 200
    assert confident.json["route"] == "auto"
    assert confident.json["reason"] == "confident"
    assert confident.json["status"] == "auto"
    assert confident.json["label"] == "good"
    assert confident.json["threshold"] == 0.8
    assert confident.json["model_version"] == 1

    unsure = predict(
        client,
        tokens["app"],
        {"input": good_input(review="paid on time", state="NY", amount=3000.0, verified=None)},
    )
    assert unsure.json["suggestion"]["confidence"] < 0.8, unsure.json
    assert unsure.status_code == 202
    assert unsure.json["reason"] == "low_confidence"
    assert unsure.json["label"] is None


def test_threshold_is_inclusive(client, tokens, task, db):
    install_model(db, "loan-review", threshold=0.8)
    first = predict(client, tokens["app"], {"input": good_input()}).json
    exact = db.get(Case, first["case_id"]).confidence  # unrounded score
    db.execute(
        __import__("sqlalchemy").text("UPDATE tasks SET threshold = :t, revision = revision + 1"),
        {"t": exact},
    )
    db.commit()
    again = predict(client, tokens["app"], {"input": good_input()}).json
    assert db.get(Case, again["case_id"]).confidence == exact
    assert again["route"] == "auto"


def test_force_review_and_never_automate_and_fallback(client, tokens, task, db):
    # never_automate is part of what a certification proves: set before the model goes live
    # (changing it later stops automation, tests/learning/test_promise_integrity.py)
    client.patch(
        "/api/v1/tasks/loan-review",
        json={"policy": {"never_automate": ["good"]}},
        headers=auth(tokens["admin"]),
    )
    install_model(db, "loan-review", threshold=0.5)
    forced = predict(client, tokens["app"], {"input": good_input(), "force_review": True})
    assert forced.status_code == 202 and forced.json["reason"] == "forced"
    assert forced.json["suggestion"] is not None

    policy = predict(client, tokens["app"], {"input": good_input()})
    assert policy.json["reason"] == "policy" and policy.json["route"] == "review"

    db.execute(
        __import__("sqlalchemy").text(
            "UPDATE tasks SET automation_state = 'fallback', revision = revision + 1"
        )
    )
    db.commit()
    fallback = predict(client, tokens["app"], {"input": good_input()})
    assert fallback.json["reason"] == "fallback"


def test_not_certified_model_is_cold_start_with_suggestion(client, tokens, task, db):
    install_model(db, "loan-review", threshold=None, state="manual")
    body = predict(client, tokens["app"], {"input": good_input()}).json
    assert body["reason"] == "cold_start"
    assert body["suggestion"]["label"] == "good"
    assert body["threshold"] is None


def test_input_far_outside_training_data_is_invalid_input(client, tokens, task, db):
    install_model(db, "loan-review", threshold=0.5)
    body = predict(client, tokens["app"], {"input": good_input(amount=1e12)}).json
    assert body["route"] == "review"
    assert body["reason"] == "invalid_input"
    assert db.get(Case, body["case_id"]).out_of_range == ["amount"]


def test_audited_automatic_answer_is_answered_and_queued(client, tokens, task, db):
    install_model(db, "loan-review", threshold=0.5)
    seen = []
    for _ in range(60):
        body = predict(client, tokens["app"], {"input": good_input()}).json
        assert "audit" not in body  # the application is never told (docs/api.md)
        seen.append(body)
    audited = [b for b in seen if db.get(Case, b["case_id"]).audit]
    plain = [b for b in seen if not db.get(Case, b["case_id"]).audit]
    assert audited and plain
    for body in audited:
        case = db.get(Case, body["case_id"])
        assert body["route"] == "auto" and body["label"] == "good"
        assert case.queue_state == "waiting"  # a human will check it later
        assert case.label_probability == pytest.approx(case.audit_rate)
    for body in plain:
        assert db.get(Case, body["case_id"]).queue_state is None


def test_get_case_returns_detail(client, tokens, task):
    created = predict(client, tokens["app"], {"input": good_input(), "external_id": "X"}).json
    resp = client.get(f"/api/v1/cases/{created['case_id']}", headers=auth(tokens["analyst"]))
    assert resp.status_code == 200
    body = resp.json
    for key in (
        "case_id",
        "status",
        "route",
        "reason",
        "label",
        "audit",
        "suggestion",
        "model_version",
        "threshold",
        "created_at",
        "final_label",
        "resolved_by",
        "resolved_at",
        "reviews",
    ):
        assert key in body
    assert body["final_label"] is None and body["resolved_by"] is None
    assert client.get("/api/v1/cases/nope", headers=auth(tokens["app"])).status_code == 404


def test_outcome_resolves_pending_case_and_conflicts_on_a_different_second_outcome(
    client, tokens, task, db
):
    case_id = predict(client, tokens["app"], {"input": good_input()}).json["case_id"]
    resp = client.post(
        f"/api/v1/cases/{case_id}/outcome", json={"label": "bad"}, headers=auth(tokens["app"])
    )
    assert resp.status_code == 200
    assert resp.json["status"] == "resolved"
    assert resp.json["final_label"] == "bad"
    assert resp.json["resolved_by"] == "application"
    assert resp.json["label"] == "bad"
    same = client.post(
        f"/api/v1/cases/{case_id}/outcome", json={"label": "bad"}, headers=auth(tokens["app"])
    )
    assert same.status_code == 200
    other = client.post(
        f"/api/v1/cases/{case_id}/outcome", json={"label": "good"}, headers=auth(tokens["app"])
    )
    assert other.status_code == 409
    assert db.get(Case, case_id).final_label == "bad"
    unknown = client.post(
        f"/api/v1/cases/{case_id}/outcome", json={"label": "maybe"}, headers=auth(tokens["app"])
    )
    assert unknown.status_code == 422
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "case.outcome")).all()
    assert len(events) == 1


def test_outcome_disagreeing_with_an_automatic_answer_corrects_it(client, tokens, task, db):
    install_model(db, "loan-review", threshold=0.5)
    for _ in range(30):  # an automatic answer not drawn for audit (audited: tests/api/test_blind)
        body = predict(client, tokens["app"], {"input": good_input()}).json
        if not db.get(Case, body["case_id"]).audit:
            break
    assert body["route"] == "auto"
    resp = client.post(
        f"/api/v1/cases/{body['case_id']}/outcome",
        json={"label": "bad"},
        headers=auth(tokens["app"]),
    )
    assert resp.json["status"] == "corrected"
    assert resp.json["final_label"] == "bad"
    case = db.get(Case, body["case_id"])
    assert case.human_label == "bad" and case.queue_state is None


def test_batch_keeps_order_answers_bad_items_in_place_and_stores_the_rest(client, tokens, task, db):
    items = [
        {"input": good_input(), "external_id": "1"},
        {"input": good_input(amount="lots")},
        {"input": good_input(), "external_id": "3"},
        {"nope": 1},
    ]
    resp = client.post(
        "/api/v1/tasks/loan-review/predict/batch",
        json={"items": items},
        headers=auth(tokens["app"]),
    )
    assert resp.status_code == 200
    results = resp.json["results"]
    assert len(results) == 4
    assert results[0]["external_id"] == "1" and results[2]["external_id"] == "3"
    assert results[1]["error"]["code"] == "validation_error"
    assert "input" in results[1]["error"]["details"]
    assert "nope" in results[3]["error"]["details"]
    assert db.scalar(select(func.count()).select_from(Case)) == 2
    # The OpenAPI document describes both kinds of item (a fuzzer once found it required
    # case_id on the error items).
    spec = client.get("/api/v1/openapi.json").json
    response_schema = spec["paths"]["/api/v1/tasks/{task}/predict/batch"]["post"]["responses"]
    schema = response_schema["200"]["content"]["application/json"]["schema"]
    jsonschema_rs.validate(json_schema_of({**schema, "components": spec["components"]}), resp.json)


def test_batch_of_1000_is_accepted_and_1001_refused(client, tokens, task, db):
    items = [{"input": good_input()} for _ in range(1000)]
    ok = client.post(
        "/api/v1/tasks/loan-review/predict/batch",
        json={"items": items},
        headers=auth(tokens["app"]),
    )
    assert ok.status_code == 200 and len(ok.json["results"]) == 1000
    too_many = client.post(
        "/api/v1/tasks/loan-review/predict/batch",
        json={"items": [*items, {"input": good_input()}]},
        headers=auth(tokens["app"]),
    )
    assert too_many.status_code == 422
    assert "items" in too_many.json["error"]["details"]
    assert db.scalar(select(func.count()).select_from(Case)) == 1000


def test_idempotency_key_replays_the_same_case_and_conflicts_on_another_body(
    client, tokens, task, db
):
    body = {"input": good_input()}
    first = predict(client, tokens["app"], body, **{"Idempotency-Key": "k-1"})
    again = predict(client, tokens["app"], body, **{"Idempotency-Key": "k-1"})
    assert first.json["case_id"] == again.json["case_id"]
    assert first.status_code == again.status_code == 202
    other = predict(
        client, tokens["app"], {"input": good_input(amount=1.0)}, **{"Idempotency-Key": "k-1"}
    )
    assert other.status_code == 409
    assert other.json["error"]["code"] == "conflict"
    assert db.scalar(select(func.count()).select_from(Case)) == 1


def test_idempotency_race_two_threads_one_key_one_case(committed_db, flask_app):
    client = flask_app.test_client()
    admin = make_token("admin")
    app_token = make_token("app")
    from tests.helpers import SIMPLE_TASK

    assert client.post("/api/v1/tasks", json=SIMPLE_TASK, headers=auth(admin)).status_code == 201
    for attempt in range(10):
        key = f"race-{attempt}"
        barrier = threading.Barrier(2)
        answers: list[Any] = []

        def send(key: str = key, barrier: threading.Barrier = barrier) -> None:
            local = flask_app.test_client()
            barrier.wait()
            resp = local.post(
                "/api/v1/tasks/loan-review/predict",
                json={"input": good_input()},
                headers={**auth(app_token), "Idempotency-Key": key},
            )
            answers.append(resp)

        threads = [threading.Thread(target=send) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [a.status_code for a in answers] == [202, 202], [a.json for a in answers]
        assert answers[0].json["case_id"] == answers[1].json["case_id"]
    count = committed_db().scalar(select(func.count()).select_from(Case))
    assert count == 10


def test_every_acknowledged_case_is_stored_with_real_commits(committed_db, flask_app):
    """Issue #13: in embedded mode only the first of six predicts survived. With real
    commits the hot path stores each case on an autocommitted connection; every case it
    acknowledged must be there afterwards, read back through the API and in the table."""
    from tests.helpers import SIMPLE_TASK

    client = flask_app.test_client()
    admin, app_token = make_token("admin"), make_token("app")
    assert client.post("/api/v1/tasks", json=SIMPLE_TASK, headers=auth(admin)).status_code == 201
    ids = []
    for i in range(6):
        resp = predict(client, app_token, {"input": good_input(), "external_id": f"n-{i}"})
        assert resp.status_code == 202, resp.json
        ids.append(resp.json["case_id"])
    committed_db.remove()
    for case_id in ids:
        assert client.get(f"/api/v1/cases/{case_id}", headers=auth(app_token)).status_code == 200
    assert committed_db().scalar(select(func.count()).select_from(Case)) == 6


def test_autocommit_connections_keep_their_writes(engine):
    """The root cause of the lost cases: SQLite's BEGIN IMMEDIATE listener opened a
    transaction on AUTOCOMMIT connections too, which the pool's reset then rolled back."""
    from sqlalchemy import text

    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE autocommit_probe (id INTEGER PRIMARY KEY)"))
    try:
        for i in range(4):
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("INSERT INTO autocommit_probe (id) VALUES (:i)"), {"i": i})
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM autocommit_probe")).scalar() == 4
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE autocommit_probe"))


def test_stale_task_cache_is_caught_by_the_insert_guard(committed_db, flask_app):
    """A change made by another process (here: a raw UPDATE) is seen by the very next
    predict, although the runtime cache is trusted without a query."""
    from sqlalchemy import text

    from service.services import predict as predict_service
    from tests.helpers import SIMPLE_TASK

    client = flask_app.test_client()
    admin, app_token = make_token("admin"), make_token("app")
    client.post("/api/v1/tasks", json=SIMPLE_TASK, headers=auth(admin))
    session = committed_db()
    install_model(session, "loan-review", threshold=0.5)
    first = predict(client, app_token, {"input": good_input()})
    assert first.json["route"] == "auto"
    assert predict_service._runtimes["loan-review"].automation_state == "automating"
    engine = flask_app.extensions["tandem_engine"]
    with engine.begin() as conn:  # another process pulls automation back
        conn.execute(
            text("UPDATE tasks SET automation_state = 'fallback', revision = revision + 1")
        )
    second = predict(client, app_token, {"input": good_input()})
    assert second.json["reason"] == "fallback"
    assert session.scalar(select(func.count()).select_from(Case)) == 2


def test_audit_mode_hold_routes_audited_confident_cases_to_people(client, tokens, task, db):
    install_model(db, "loan-review", threshold=0.5)
    client.patch(
        "/api/v1/tasks/loan-review",
        json={"policy": {"audit_mode": "hold"}},
        headers=auth(tokens["admin"]),
    )
    results = [predict(client, tokens["app"], {"input": good_input()}).json for _ in range(40)]
    flagged = {r["case_id"]: db.get(Case, r["case_id"]).audit for r in results}
    held = [r for r in results if flagged[r["case_id"]]]
    assert held, "expected some audited cases at the audit rate"
    for r in held:
        assert (r["route"], r["reason"], r["label"]) == ("review", "audit", None)
    for r in results:
        if not flagged[r["case_id"]]:
            assert r["route"] == "auto"
