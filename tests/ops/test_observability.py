"""/metrics, JSON logs with request ids (also inside jobs), no secrets in logs, health."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from rq import SimpleWorker
from sqlalchemy import select

from service import queues
from service.models import OutboxEntry
from service.observability import ContextFilter, JsonFormatter, redact
from tests.helpers import SIMPLE_TASK, auth, good_input, make_token


def scrape(client: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    client.application.extensions["tandem_state_collector"].invalidate()
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_request_latency_and_case_counters(client: Any, tokens: dict[str, str], task: Any) -> None:
    before = scrape(client)
    rule = "/api/v1/tasks/<string:task>/predict"
    headers = {**auth(tokens["app"]), "Idempotency-Key": "obs-1"}
    r = client.post(
        "/api/v1/tasks/loan-review/predict", json={"input": good_input()}, headers=headers
    )
    assert r.status_code == 202
    # A replay of the same key is not a new case.
    assert (
        client.post(
            "/api/v1/tasks/loan-review/predict", json={"input": good_input()}, headers=headers
        ).status_code
        == 202
    )
    batch = {"items": [{"input": good_input()}, {"input": {"nope": 1}}, {"input": good_input()}]}
    assert (
        client.post(
            "/api/v1/tasks/loan-review/predict/batch", json=batch, headers=auth(tokens["app"])
        ).status_code
        == 200
    )
    after = scrape(client)
    key = {"task": "loan-review", "route": "review", "reason": "cold_start"}
    cases = "tandem_cases_total"
    assert value(after, cases, **key) - value(before, cases, **key) == 3
    count = "tandem_http_request_duration_seconds_count"
    assert (
        value(after, count, endpoint=rule, method="POST")
        - value(before, count, endpoint=rule, method="POST")
        == 2
    )
    # Labelled by URL rule, never by the raw path (bounded cardinality).
    assert not any("loan-review/predict" in dict(k[1]).get("endpoint", "") for k in after)
    assert (
        value(after, "tandem_http_requests_total", endpoint=rule, method="POST", status="202") >= 2
    )


def test_unmatched_paths_share_one_label(client: Any) -> None:
    for i in range(3):
        client.get(f"/no/such/{i}")
    samples = scrape(client)
    assert (
        value(
            samples,
            "tandem_http_requests_total",
            endpoint="<unmatched>",
            method="GET",
            status="404",
        )
        >= 3
    )


def test_state_gauges_read_committed_state(
    committed_db: Any, flask_app: Any, redis_conn: Any
) -> None:
    client = flask_app.test_client()
    admin, app_token = make_token("admin"), make_token("app")
    assert client.post("/api/v1/tasks", json=SIMPLE_TASK, headers=auth(admin)).status_code == 201
    for _ in range(3):
        client.post(
            "/api/v1/tasks/loan-review/predict",
            json={"input": good_input()},
            headers=auth(app_token),
        )
    queues.rq_queue(queues.WEBHOOKS.name, redis_conn).enqueue("builtins.print", "x")
    samples = scrape(client)
    assert value(samples, "tandem_database_up") == 1
    assert value(samples, "tandem_redis_up") == 1
    assert value(samples, "tandem_queue_depth", task="loan-review", state="waiting") == 3
    assert value(samples, "tandem_queue_depth", task="loan-review", state="leased") == 0
    assert value(samples, "tandem_queue_oldest_pending_seconds", task="loan-review") >= 0
    assert ("tandem_queue_oldest_pending_seconds", (("task", "loan-review"),)) in samples
    assert value(samples, "tandem_automation_state", task="loan-review", state="manual") == 1
    assert value(samples, "tandem_automation_coverage", task="loan-review") == 0
    assert value(samples, "tandem_rq_queue_length", queue="webhooks") == 1
    assert value(samples, "tandem_rq_queue_length", queue="training") == 0
    assert ("tandem_outbox_pending", ()) in samples


def test_metrics_survive_a_dead_redis(flask_app: Any, settings: Any, db: Any) -> None:
    from tandem.app import create_app

    broken = create_app(settings, redis_url="redis://127.0.0.1:1/0")
    samples = scrape(broken.test_client())
    assert value(samples, "tandem_redis_up") == 0
    assert value(samples, "tandem_database_up") == 1


# ---------------------------------------------------------------------------- logs


def json_capture(level: int = logging.DEBUG) -> tuple[logging.Handler, io.StringIO]:
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    handler.setLevel(level)
    return handler, buf


def test_json_log_lines_carry_the_request_id(client: Any) -> None:
    handler, buf = json_capture()
    logger = logging.getLogger("service.test")
    logger.addHandler(handler)
    try:
        with client.application.test_request_context(headers={"X-Request-ID": "req-abc"}):
            client.application.preprocess_request()
            logger.warning("hello %s", "world")
    finally:
        logger.removeHandler(handler)
    line = json.loads(buf.getvalue().strip())
    assert line["message"] == "hello world"
    assert line["request_id"] == "req-abc"
    assert line["level"] == "warning" and line["logger"] == "service.test"


def test_job_logs_carry_the_request_id_from_the_outbox(
    committed_db: Any, flask_app: Any, redis_conn: Any
) -> None:
    from service.services import outbox
    from service.uow import unit_of_work
    from workers import context

    context.set_app(flask_app)
    with unit_of_work() as session:
        outbox.defer(
            session,
            "tests.ops.ops_jobs.log_line",
            queue=queues.MAINTENANCE,
            request_id="req-from-api",
            text="hi",
        )
    # pushed by the unit of work once it committed
    assert queues.rq_queue(queues.MAINTENANCE.name, redis_conn).count == 1
    with unit_of_work() as session:
        sent = session.scalars(select(OutboxEntry.enqueued_at)).all()
        assert len(sent) == 1 and sent[0] is not None
    handler, buf = json_capture()
    logger = logging.getLogger("tandem.test.job")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        worker = SimpleWorker(
            [queues.rq_queue(queues.MAINTENANCE.name, redis_conn)],
            connection=redis_conn,
            serializer=queues.SERIALIZER,
        )
        assert worker.work(burst=True)
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert [x["message"] for x in lines] == ["job says hi"]
    assert lines[0]["request_id"] == "req-from-api"
    assert lines[0]["job_id"]


def test_no_token_or_case_input_in_logs(
    client: Any, tokens: dict[str, str], task: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret_text = "SSN 078-05-1120 very private review text"
    handler, buf = json_capture()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with caplog.at_level(logging.DEBUG):
            ok = client.post(
                "/api/v1/tasks/loan-review/predict",
                json={"input": good_input(review=secret_text)},
                headers=auth(tokens["app"]),
            )
            bad = client.post(
                "/api/v1/tasks/loan-review/predict",
                json={"input": good_input(review=secret_text, amount="x")},
                headers=auth(tokens["app"]),
            )
            denied = client.post(
                "/api/v1/tasks/loan-review/predict",
                json={"input": good_input(review=secret_text)},
                headers=auth(tokens["app"] + "tampered"),
            )
    finally:
        root.removeHandler(handler)
    assert (ok.status_code, bad.status_code, denied.status_code) == (202, 422, 401)
    logged = caplog.text + buf.getvalue() + "".join(str(r.args) for r in caplog.records)
    assert tokens["app"] not in logged
    assert "078-05-1120" not in logged and "private review" not in logged


def test_redact_masks_tokens_and_secrets() -> None:
    text = "Authorization: Bearer abc.def tdm_AAAAAAAAAAAAAAAA whsec_QUJDREVGR0hJSks="
    masked = redact(text)
    assert "abc.def" not in masked and "tdm_AAAA" not in masked and "whsec_QUJD" not in masked
    assert re.search(r"Bearer \[redacted\]", masked)


# -------------------------------------------------------------------------- health


def test_healthz_and_readyz(client: Any) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    resp = client.get("/readyz")
    assert resp.status_code == 200
    assert resp.json["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_reports_redis_down(settings: Any, db: Any) -> None:
    from tandem.app import create_app

    broken = create_app(settings, redis_url="redis://127.0.0.1:1/0")
    assert settings.redis_url != "redis://127.0.0.1:1/0"  # overrides apply to a copy
    resp = broken.test_client().get("/readyz")
    assert resp.status_code == 503
    assert resp.json["status"] == "degraded"
    assert resp.json["checks"]["redis"].startswith("unavailable")
    assert resp.json["checks"]["database"] == "ok"


def test_readyz_reports_pending_migrations(settings: Any, flask_app: Any, tmp_path: Any) -> None:
    from service.db import configure
    from tandem.app import create_app

    try:
        fresh = create_app(settings, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
        resp = fresh.test_client().get("/readyz")
    finally:
        configure(flask_app.extensions["tandem_engine"])  # create_app rebinds the session
    assert resp.status_code == 503
    assert resp.json["checks"]["database"] == "migrations pending"
