"""What the application may know of the audit sample (docs/api.md): nothing. The predict
response (single and batch), its case read-back, webhook payloads and the OpenAPI document
carry no audit flag, and an application's outcome is kept beside the audit label, never in
its place: an audited case still waits for a person's verdict, which is the ledger's label."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from service.models import Case, Task, WebhookDelivery
from service.services import review, training_run
from service.services.accounts import user_actor
from service.services.audit import SYSTEM
from service.services.tasks import update_task
from tests.helpers import auth, good_input, install_model
from tests.review.conftest import make_user

PREDICT = "/api/v1/tasks/loan-review/predict"


def _predict(client: Any, token: str) -> dict[str, Any]:
    resp = client.post(PREDICT, json={"input": good_input()}, headers=auth(token))
    assert resp.status_code in (200, 202), resp.json
    return resp.json


def _first(client: Any, token: str, db: Any, *, audited: bool, route: str) -> dict[str, Any]:
    """Predict until a case with the wanted audit flag and route comes (flags are drawn from
    the case id at the task's rate, 0.3 here: 40 tries miss with probability ~1e-6)."""
    for _ in range(40):
        body = _predict(client, token)
        case = db.get(Case, body["case_id"])
        if case.audit == audited and case.route == route:
            # The others leave the queue: this one is the next a reviewer claims.
            db.execute(update(Case).where(Case.id != case.id).values(queue_state=None))
            db.commit()
            return body
    raise AssertionError(f"no case with audit={audited} route={route} in 40 tries")


def labelled(ledger_labels: list[str | None]) -> list[str]:
    """The ledger's labels without the flagged cases still waiting for their review (the other
    cases ``_first`` predicted on the way are in the ledger too, unlabelled)."""
    return [label for label in ledger_labels if label is not None]


def _reviewer(db: Any) -> Any:
    user = make_user(db())
    db.commit()
    return user_actor(user)


def _review(db: Any, case_id: str, label: str) -> None:
    actor = _reviewer(db)
    claimed = review.claim(db(), "loan-review", actor)
    assert claimed is not None and claimed.case.id == case_id
    review.submit_review(db(), case_id, label, actor)
    db.commit()


def test_predict_single_and_batch_never_reveal_the_audit_flag(client, tokens, task, db):
    install_model(db, "loan-review", threshold=0.5)
    singles = [_predict(client, tokens["app"]) for _ in range(30)]
    batch = client.post(
        "/api/v1/tasks/loan-review/predict/batch",
        json={"items": [{"input": good_input()} for _ in range(30)]},
        headers=auth(tokens["app"]),
    ).json["results"]
    flags = [db.get(Case, r["case_id"]).audit for r in [*singles, *batch]]
    assert any(flags) and not all(flags)  # both kinds were answered
    for body in [*singles, *batch]:
        assert "audit" not in body, body
    # The same for what an application token reads back.
    for body in singles:
        read = client.get(f"/api/v1/cases/{body['case_id']}", headers=auth(tokens["app"])).json
        assert "audit" not in read, read
    # Analysts and admins still see the flag.
    audited = next(b for b in singles if db.get(Case, b["case_id"]).audit)
    full = client.get(f"/api/v1/cases/{audited['case_id']}", headers=auth(tokens["analyst"]))
    assert full.json["audit"] is True


def test_openapi_documents_no_audit_flag_for_applications(client):
    spec = client.get("/api/v1/openapi.json").json
    schemas = spec["components"]["schemas"]
    assert "audit" not in schemas["CaseResult"]["properties"]
    assert "audit" not in schemas["BatchItem"]["properties"]
    described = schemas["CaseDetail"]["properties"]["audit"]["description"]
    assert "analysts and admins only" in described


def test_a_confirmed_audit_leaves_no_trace_for_the_application(client, tokens, task, db):
    """An audit that confirmed the model's answer settles nothing the application sees: no
    review is listed (it would tell the case was audited), no webhook."""
    install_model(db, "loan-review", threshold=0.5)
    update_task(db(), db.scalar(select(Task)), {"webhook": {"url": "http://hook.test/x"}}, SYSTEM)
    db.commit()
    body = _first(client, tokens["app"], db, audited=True, route="auto")
    _review(db, body["case_id"], body["label"])
    read = client.get(f"/api/v1/cases/{body['case_id']}", headers=auth(tokens["app"])).json
    assert read["status"] == "auto" and read["reviews"] == []
    assert db.scalars(select(WebhookDelivery)).all() == []
    assert db.get(Case, body["case_id"]).human_label == body["label"]  # the ledger has it


def test_webhook_payloads_carry_no_audit_flag(client, tokens, task, db):
    update_task(db(), db.scalar(select(Task)), {"webhook": {"url": "http://hook.test/x"}}, SYSTEM)
    db.commit()
    # No model: all queued. At least one must be audited for the test to say anything; flags
    # come from the case id at rate 0.3, so 12 cases miss ~1.4% of runs: predict on until one is.
    queued = [_predict(client, tokens["app"]) for _ in range(12)]
    while not any(db.get(Case, b["case_id"]).audit for b in queued) and len(queued) < 60:
        queued.append(_predict(client, tokens["app"]))
    for body in queued:
        out = client.post(
            f"/api/v1/cases/{body['case_id']}/outcome",
            json={"label": "good"},
            headers=auth(tokens["app"]),
        )
        assert out.status_code == 200
        assert "audit" not in out.json
    deliveries = db.scalars(select(WebhookDelivery)).all()
    assert len(deliveries) == len(queued)  # audited or not, every outcome resolves
    assert any(db.get(Case, b["case_id"]).audit for b in queued)
    for delivery in deliveries:
        assert delivery.event_type == "case.resolved"
        assert "audit" not in delivery.payload["data"], delivery.payload


def test_outcome_on_an_audited_automatic_answer_keeps_the_audit_review(client, tokens, task, db):
    install_model(db, "loan-review", threshold=0.5)
    body = _first(client, tokens["app"], db, audited=True, route="auto")
    case_id, model_label = body["case_id"], body["label"]
    other = "bad" if model_label == "good" else "good"
    resp = client.post(
        f"/api/v1/cases/{case_id}/outcome", json={"label": other}, headers=auth(tokens["app"])
    )
    # The application sees what it sees on any automatic answer it contradicts ...
    assert resp.status_code == 200
    assert resp.json["status"] == "corrected" and resp.json["final_label"] == other
    assert resp.json["resolved_by"] == "application" and "audit" not in resp.json
    # ... but its outcome is not the audit label: the case still waits for its person.
    case = db.get(Case, case_id)
    assert case.outcome_label == other
    assert case.human_label is None and case.queue_state == "waiting"
    # The blind verdict becomes the human label; the application's answer stays final.
    _review(db, case_id, model_label)
    db.expire_all()
    case = db.get(Case, case_id)
    assert case.human_label == model_label and case.queue_state is None
    assert case.final_label == other and case.outcome_label == other
    ledger = training_run.collect(db(), db.get(Task, case.task_id))
    assert labelled(ledger.ledger_labels) == [model_label]


def test_outcome_on_an_audited_queued_case_resolves_it_for_the_application_only(
    client, tokens, task, db
):
    body = _first(client, tokens["app"], db, audited=True, route="review")  # cold start
    case_id = body["case_id"]
    resp = client.post(
        f"/api/v1/cases/{case_id}/outcome", json={"label": "bad"}, headers=auth(tokens["app"])
    )
    assert resp.json["status"] == "resolved" and resp.json["resolved_by"] == "application"
    case = db.get(Case, case_id)
    assert case.human_label is None and case.queue_state == "waiting"
    _review(db, case_id, "good")
    db.expire_all()
    case = db.get(Case, case_id)
    assert (case.human_label, case.final_label, case.status) == ("good", "bad", "resolved")
    # the ledger holds every flagged case, labelled or not (docs/policy.md, "Which audits
    # count"); its one labelled case carries the reviewer's verdict
    ledger = training_run.collect(db(), db.get(Task, case.task_id)).ledger_labels
    assert labelled(ledger) == ["good"]
    # On a case not drawn for audit the outcome is the human label, as it always was.
    plain = _first(client, tokens["app"], db, audited=False, route="review")
    client.post(
        f"/api/v1/cases/{plain['case_id']}/outcome",
        json={"label": "bad"},
        headers=auth(tokens["app"]),
    )
    case = db.get(Case, plain["case_id"])
    assert case.human_label == "bad" and case.queue_state is None
    data = training_run.collect(db(), db.get(Task, case.task_id))
    assert data.train_labels == ["bad"] and labelled(data.ledger_labels) == ["good"]


def test_an_audit_verdict_given_after_the_outcome_can_be_undone(client, tokens, task, db):
    """Undo takes back the verdict (the human label) and nothing the application set."""
    body = _first(client, tokens["app"], db, audited=True, route="review")
    case_id = body["case_id"]
    client.post(
        f"/api/v1/cases/{case_id}/outcome", json={"label": "bad"}, headers=auth(tokens["app"])
    )
    actor = _reviewer(db)
    review.claim(db(), "loan-review", actor)
    review.submit_review(db(), case_id, "good", actor)
    db.commit()
    review.undo(db(), case_id, actor)
    db.commit()
    case = db.get(Case, case_id)
    assert case.human_label is None and case.queue_state == "leased"
    assert (case.status, case.final_label, case.label_source) == ("resolved", "bad", "application")
