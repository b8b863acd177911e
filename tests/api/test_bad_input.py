"""Bad input gets a clear JSON error in the one error shape and stores nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from service.models import Case
from tests.helpers import auth, good_input

PREDICT = "/api/v1/tasks/loan-review/predict"


def count_cases(db: Any) -> int:
    return db.scalar(select(func.count()).select_from(Case))


def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.is_json
    body = resp.json
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def test_malformed_json_is_400(client, tokens, task, db):
    resp = client.post(
        PREDICT, data='{"input": {', content_type="application/json", headers=auth(tokens["app"])
    )
    assert_error(resp, 400, "bad_request")
    assert count_cases(db) == 0


def test_wrong_content_type_is_415(client, tokens, task, db):
    resp = client.post(
        PREDICT,
        data=json.dumps({"input": good_input()}),
        content_type="text/plain",
        headers=auth(tokens["app"]),
    )
    assert_error(resp, 415, "unsupported_media_type")
    form = client.post(PREDICT, data={"input": "x"}, headers=auth(tokens["app"]))
    assert_error(form, 415, "unsupported_media_type")
    assert count_cases(db) == 0


def test_unknown_task_is_404(client, tokens, task):
    resp = client.post(
        "/api/v1/tasks/missing/predict", json={"input": good_input()}, headers=auth(tokens["app"])
    )
    assert_error(resp, 404, "not_found")


def test_body_over_the_size_limit_is_413(client, tokens, task, db):
    limit = client.application.config["MAX_CONTENT_LENGTH"]
    huge = json.dumps({"input": good_input(review="x" * (limit + 10))})
    resp = client.post(
        PREDICT, data=huge, content_type="application/json", headers=auth(tokens["app"])
    )
    assert_error(resp, 413, "payload_too_large")
    assert count_cases(db) == 0


SCHEMA_VIOLATIONS = [
    ({"review": "ok", "amount": 1.0}, "state", "Missing data"),  # missing required field
    ({**good_input(), "amount": "12"}, "amount", "Not a number"),  # wrong type
    ({**good_input(), "amount": True}, "amount", "Not a number"),  # bool is not a number
    ({**good_input(), "state": 5}, "state", "Not a valid string"),
    ({**good_input(), "verified": "yes"}, "verified", "Not a boolean"),
    ({**good_input(), "colour": "red"}, "colour", "Unknown field"),  # unknown field
    ({**good_input(), "review": None}, "review", "Field may not be null"),  # required null
    ({**good_input(), "review": "x" * 100_001}, "review", "Longer than maximum length"),
]


@pytest.mark.parametrize(("values", "field", "message"), SCHEMA_VIOLATIONS)
def test_schema_violations_are_422_naming_the_field(
    client, tokens, task, db, values, field, message
):
    resp = client.post(PREDICT, json={"input": values}, headers=auth(tokens["app"]))
    error = assert_error(resp, 422, "validation_error")
    assert field in error["details"]["input"], error
    assert any(message in m for m in error["details"]["input"][field]), error
    assert f"input.{field}" in error["message"]
    assert count_cases(db) == 0


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_422(client, tokens, task, db, literal):
    raw = json.dumps({"input": good_input()}).replace("1200.5", literal)
    resp = client.post(
        PREDICT, data=raw, content_type="application/json", headers=auth(tokens["app"])
    )
    error = assert_error(resp, 422, "validation_error")
    assert "amount" in error["details"]["input"]
    assert count_cases(db) == 0


def test_optional_fields_may_be_null_or_absent(client, tokens, task, db):
    resp = client.post(
        PREDICT, json={"input": good_input(amount=None, verified=None)}, headers=auth(tokens["app"])
    )
    assert resp.status_code == 202
    values = good_input()
    del values["amount"]
    resp = client.post(PREDICT, json={"input": values}, headers=auth(tokens["app"]))
    assert resp.status_code == 202
    stored = db.get(Case, resp.json["case_id"]).input
    assert stored["amount"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "input"),
        ({"input": "text"}, "input"),
        ({"input": good_input(), "external_id": 5}, "external_id"),
        ({"input": good_input(), "external_id": "x" * 201}, "external_id"),
        ({"input": good_input(), "force_review": "yes"}, "force_review"),
        ({"input": good_input(), "extra": 1}, "extra"),
        ([1, 2], "_schema"),
    ],
)
def test_envelope_violations_are_422(client, tokens, task, db, body, field):
    resp = client.post(PREDICT, json=body, headers=auth(tokens["app"]))
    error = assert_error(resp, 422, "validation_error")
    assert field in error["details"], error
    assert count_cases(db) == 0


def test_unicode_and_long_text_within_limits_are_accepted(client, tokens, task, db):
    text = "Zoë 🙂 — naïve café " * 1000
    resp = client.post(
        PREDICT, json={"input": good_input(review=text)}, headers=auth(tokens["app"])
    )
    assert resp.status_code == 202
    assert db.get(Case, resp.json["case_id"]).input["review"] == text


def test_nul_characters_are_refused(client, tokens, task, db):
    resp = client.post(
        PREDICT, json={"input": good_input(review="a\x00b")}, headers=auth(tokens["app"])
    )
    assert_error(resp, 422, "validation_error")


def test_unknown_routes_and_methods_use_the_error_shape(client, tokens):
    assert_error(client.get("/api/v1/nowhere", headers=auth(tokens["app"])), 404, "not_found")
    resp = client.delete("/api/v1/tasks", headers=auth(tokens["admin"]))
    assert_error(resp, 405, "method_not_allowed")


def test_ids_beyond_64_bits_are_404_not_a_database_error(client, tokens, task):
    huge = "1238612817609851928576"
    resp = client.post(f"/api/v1/webhooks/deliveries/{huge}/replay", headers=auth(tokens["admin"]))
    assert_error(resp, 404, "not_found")
    resp = client.post(
        f"/api/v1/tasks/loan-review/models/{huge}/activate", headers=auth(tokens["admin"])
    )
    assert_error(resp, 404, "not_found")


# ----------------------------------------------- issue #16: hostile input and named fields


def raw(client: Any, url: str, body: str, token: str) -> Any:
    return client.post(url, data=body, content_type="application/json", headers=auth(token))


def test_hostile_values_are_422s_that_name_their_field(client, tokens, task, db) -> None:
    huge = "1" + "0" * 400  # parses as a Python int no double can hold
    cases = [
        ('{"input": {"review": "x", "state": "CA", "amount": ' + huge + "}}", "input"),
        ('{"input": {"review": "x", "state": "CA"}, "external_id": "a\\u0000b"}', "external_id"),
    ]
    for body, field in cases:
        error = assert_error(raw(client, PREDICT, body, tokens["app"]), 422, "validation_error")
        assert field in error["details"], (body[:60], error)
    assert count_cases(db) == 0


def test_task_settings_are_refused_rather_than_truncated(client, tokens, task) -> None:
    before = client.get("/api/v1/tasks/loan-review", headers=auth(tokens["admin"])).json
    for policy in ({"min_labels": 10.5}, {"retrain_every": "100"}):
        resp = client.patch(
            "/api/v1/tasks/loan-review", json={"policy": policy}, headers=auth(tokens["admin"])
        )
        error = assert_error(resp, 422, "validation_error")
        assert "policy" in error["details"], error
    after = client.get("/api/v1/tasks/loan-review", headers=auth(tokens["admin"])).json
    assert after["policy"] == before["policy"]
    resp = client.post(
        "/api/v1/tasks",
        json={
            "name": "nul",
            "labels": ["ok", "b\u0000d"],
            "fields": [{"name": "t", "type": "text"}],
        },
        headers=auth(tokens["admin"]),
    )
    assert "labels" in assert_error(resp, 422, "validation_error")["details"]


def test_a_model_version_beyond_the_database_range_is_not_found(client, tokens, task) -> None:
    resp = client.post(
        "/api/v1/tasks/loan-review/models/3000000000/activate", headers=auth(tokens["admin"])
    )
    assert_error(resp, 404, "not_found")


def test_who_may_call_is_settled_before_the_body_is_read(client, tokens, task) -> None:
    # A reviewer token not bound to a person is refused whatever it sends.
    for url in ("/api/v1/tasks/loan-review/queue/claim", "/api/v1/cases/abc/review"):
        resp = raw(client, url, '{"nonsense": true', tokens["reviewer"])
        error = assert_error(resp, 403, "forbidden")
        assert "--user" in error["message"]
    # No token at all: 401, not a complaint about the query.
    assert_error(client.get("/api/v1/tasks/loan-review/queue?limit=abc"), 401, "unauthorized")
