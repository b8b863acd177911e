"""A Python client generated from the OpenAPI document (docs/api.md, "Generating a client")
is typed and works: openapi-python-client generates it without a single warning, and the
calls an integrator makes go through its typed functions and models against the app, on
both backends.

The generator runs as a library on the served document (about a second, offline); the client
talks to the app through ``httpx.WSGITransport``, inside the test's rolled-back transaction.
"""

from __future__ import annotations

import datetime
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.helpers import SIMPLE_TASK, good_input, install_model, make_token

PACKAGE = "tandem_generated_client"
_generated: dict[str, ModuleType] = {}


def _generate(spec: dict[str, Any], root: Path) -> ModuleType:
    """Generate the client package under ``root`` and import it (once per document)."""
    from openapi_python_client import generate
    from openapi_python_client.config import Config, ConfigFile, MetaType

    key = json.dumps(spec, sort_keys=True)
    if key in _generated:
        return _generated[key]
    document = root / "openapi.json"
    document.write_text(key)
    name = f"{PACKAGE}_{len(_generated)}"
    config = Config.from_sources(
        ConfigFile(post_hooks=[]),  # no formatter run: the code is imported, never read
        MetaType.NONE,
        document,
        "utf-8",
        overwrite=True,
        output_path=root / name,
    )
    errors = generate(config=config)
    # Any warning (an unsupported or untyped schema, a skipped endpoint) fails the test.
    assert not errors, [f"{e.level.value} {e.header}: {e.detail}" for e in errors]
    sys.path.insert(0, str(root))
    try:
        _generated[key] = importlib.import_module(name)
    finally:
        sys.path.remove(str(root))
    return _generated[key]


@pytest.fixture(scope="session")
def generated(flask_app: Any, tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    spec = flask_app.test_client().get("/api/v1/openapi.json").get_json()
    return _generate(spec, tmp_path_factory.mktemp("generated-client"))


def _mod(package: ModuleType, path: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{path}")


def test_generated_client_makes_the_main_calls_with_typed_answers(
    app: Any, db: Any, generated: ModuleType, redis_conn: Any
) -> None:
    models = _mod(generated, "models")
    api = _mod(generated, "api")
    del api  # the endpoint modules are imported one by one below

    def client(token: str) -> Any:
        return generated.AuthenticatedClient(
            base_url="http://tandem.test",
            token=token,
            raise_on_unexpected_status=True,
            httpx_args={"transport": httpx.WSGITransport(app=app)},
        )

    def call(path: str, **kwargs: Any) -> Any:
        return _mod(generated, f"api.{path}").sync_detailed(**kwargs)

    from service.services.accounts import create_token, create_user
    from service.services.audit import SYSTEM
    from service.uow import unit_of_work

    admin = client(make_token("admin"))
    app_client = client(make_token("app"))
    analyst = client(make_token("analyst"))
    with unit_of_work() as session:
        create_user(
            session,
            email="rev@example.org",
            password="rev-password-1",
            role="reviewer",
            task_scope=None,
            actor=SYSTEM,
        )
    with unit_of_work() as session:
        reviewer_token = create_token(
            session,
            role="reviewer",
            name="rev",
            task_scope=None,
            actor=SYSTEM,
            user_email="rev@example.org",
        ).token
    reviewer = client(reviewer_token)

    # Tasks: create (with a webhook, so that deliveries are recorded) and read back.
    body = {**SIMPLE_TASK, "webhook": {"url": "http://127.0.0.1:9/hook", "secret": "hook-secret"}}
    created = call("tasks.post_api_v1_tasks", client=admin, body=models.TaskCreate.from_dict(body))
    assert created.status_code == 201
    assert isinstance(created.parsed, models.Task)
    assert isinstance(created.parsed.created_at, datetime.datetime)
    assert isinstance(created.parsed.webhook, models.Webhook)
    assert created.parsed.webhook.url == "http://127.0.0.1:9/hook"
    name = created.parsed.name
    read = call("tasks.get_api_v1_tasks_task", task=name, client=app_client).parsed
    assert read.automation.state == models.AutomationState.MANUAL
    install_model(db, name, threshold=0.5)

    # Predict: answered automatically, with a typed suggestion.
    answered = call(
        "predict.post_api_v1_tasks_task_predict",
        task=name,
        client=app_client,
        body=models.PredictRequest(input_=models.PredictRequestInput.from_dict(good_input())),
        idempotency_key="k-1",
    )
    assert answered.status_code == 200
    auto = answered.parsed
    assert isinstance(auto, models.CaseResult)
    assert isinstance(auto.suggestion, models.Suggestion)
    assert auto.suggestion.label in SIMPLE_TASK["labels"]
    assert 0.0 <= auto.suggestion.confidence <= 1.0
    assert set(auto.suggestion.scores.additional_properties) == set(SIMPLE_TASK["labels"])
    assert auto.route == models.CaseResultRoute.AUTO
    assert isinstance(auto.created_at, datetime.datetime)

    # Batch: one item for a person, one invalid (its error in place).
    batch = call(
        "predict.post_api_v1_tasks_task_predict_batch",
        task=name,
        client=app_client,
        body=models.BatchRequest.from_dict(
            {
                "items": [
                    {"input": good_input(), "external_id": "ext-1", "force_review": True},
                    {"input": good_input(amount="lots")},
                ]
            }
        ),
    ).parsed
    queued, invalid = batch.results
    assert queued.reason == models.BatchItemReason.FORCED and queued.external_id == "ext-1"
    assert isinstance(invalid.error, models.ErrorDetail)
    assert invalid.error.code == "validation_error"

    # Review: a reviewer bound to their account claims the case and decides it (passing
    # over the automatic answer, which waits in the queue too when drawn for audit).
    claimed = call(
        "review.post_api_v1_tasks_task_queue_claim",
        task=name,
        client=reviewer,
        body=models.ClaimRequest(exclude=[auto.case_id]),
    )
    assert claimed.status_code == 200
    assert isinstance(claimed.parsed, models.BlindCase)
    assert claimed.parsed.case_id == queued.case_id
    assert isinstance(claimed.parsed.lease_expires_at, datetime.datetime)
    decided = call(
        "review.post_api_v1_cases_case_id_review",
        case_id=queued.case_id,
        client=reviewer,
        body=models.ReviewRequest(label="bad"),
    ).parsed
    assert isinstance(decided, models.Decision)
    assert decided.undo_until > decided.decided_at

    # The application reads the resolved case: typed instants, enums and reviews.
    case = call("cases.get_api_v1_cases_case_id", case_id=queued.case_id, client=app_client)
    resolved = case.parsed
    assert isinstance(resolved, models.CaseDetail)
    assert resolved.final_label == "bad"
    assert resolved.resolved_by == models.CaseDetailResolvedByType0.REVIEWER
    assert isinstance(resolved.resolved_at, datetime.datetime)
    assert isinstance(resolved.suggestion, models.Suggestion)
    assert isinstance(resolved.reviews[0].decided_at, datetime.datetime)
    assert resolved.input_.additional_properties == good_input()

    # An outcome on the automatic answer: the case carries it, typed.
    other = next(x for x in SIMPLE_TASK["labels"] if x != auto.suggestion.label)
    outcome = call(
        "cases.post_api_v1_cases_case_id_outcome",
        case_id=auto.case_id,
        client=app_client,
        body=models.OutcomeRequest(label=other),
    ).parsed
    assert isinstance(outcome.outcome, models.OutcomeView)
    assert outcome.outcome.label == other
    assert isinstance(outcome.outcome.reported_at, datetime.datetime)

    # Webhook deliveries: each payload is its event's class, its data typed.
    page = call(
        "webhooks.get_api_v1_tasks_task_webhooks_deliveries", task=name, client=admin
    ).parsed
    assert isinstance(page, models.DeliveryPage)
    payloads = {d.event_type.value: d.payload for d in page.deliveries}
    assert set(payloads) == {"case.resolved", "case.corrected"}
    assert isinstance(payloads["case.resolved"], models.CaseResolvedEvent)
    assert isinstance(payloads["case.corrected"], models.CaseCorrectedEvent)
    assert isinstance(payloads["case.resolved"].timestamp, datetime.datetime)
    assert payloads["case.resolved"].data.final_label == "bad"
    assert isinstance(page.deliveries[0].created_at, datetime.datetime)

    # Stats and the model list for analysts.
    stats = call("stats.get_api_v1_tasks_task_stats", task=name, client=analyst).parsed
    assert isinstance(stats, models.TaskStats)
    assert isinstance(stats.window.since, datetime.datetime)
    assert stats.automation.state == models.AutomationStatsState.AUTOMATING
    versions = call("models.get_api_v1_tasks_task_models", task=name, client=analyst).parsed
    assert versions.models[0].status == models.ModelVersionStatus.ACTIVE
    assert isinstance(versions.models[0].activated_at, datetime.datetime | type(None))

    # Exports: a JSON Lines stream whose lines are ExportRows, then a stored snapshot's
    # metadata.
    stream = call(
        "export.get_api_v1_tasks_task_export",
        task=name,
        client=analyst,
        format_=models.GetApiV1TasksTaskExportFormat.JSONL,
    )
    assert stream.status_code == 200
    rows = [models.ExportRow.from_dict(json.loads(line)) for line in stream.content.splitlines()]
    assert {r.case_id for r in rows} == {auto.case_id, queued.case_id}
    assert all(isinstance(r.created_at, datetime.datetime) for r in rows)
    assert {r.additional_properties["input.state"] for r in rows} == {"CA"}
    started = call(
        "export.post_api_v1_tasks_task_exports",
        task=name,
        client=analyst,
        body=models.SnapshotRequest.from_dict(
            {"format": "parquet", "filters": {"route": "review"}}
        ),
    )
    assert started.status_code == 202
    assert isinstance(started.parsed, models.SnapshotQueued)
    export = call(
        "export.get_api_v1_exports_export_id", export_id=started.parsed.export_id, client=analyst
    ).parsed
    assert isinstance(export, models.ExportView)
    assert export.state == models.ExportViewState.QUEUED
    assert export.filters.route == "review"  # one value as itself (several: a list)
    assert isinstance(export.created_at, datetime.datetime)
    listed = call("export.get_api_v1_tasks_task_exports", task=name, client=analyst).parsed
    assert [e.export_id for e in listed.exports] == [export.export_id]
