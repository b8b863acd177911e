"""Text that is not valid Unicode never reaches storage, an export never fails silently, and
an admin can repair a stored case (issue #16, item 2)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import func, select

from service.models import AuditEvent, Case, Task
from tests.helpers import SIMPLE_TASK, auth

PREDICT = "/api/v1/tasks/loan-review/predict"
LONE = "a\\ud800b"  # as a JSON text spells it: a string cut inside an emoji


def raw_post(client: Any, url: str, body: str, token: str) -> Any:
    return client.post(url, data=body, content_type="application/json", headers=auth(token))


def cases(db: Any) -> int:
    return int(db.scalar(select(func.count()).select_from(Case)) or 0)


def test_a_lone_surrogate_is_refused_naming_the_field(client, tokens, task, db) -> None:
    before = cases(db)
    resp = raw_post(
        client, PREDICT, f'{{"input": {{"review": "{LONE}", "state": "CA"}}}}', tokens["app"]
    )
    assert resp.status_code == 422, resp.json
    assert list(resp.json["error"]["details"]) == ["input.review"]
    resp = raw_post(
        client,
        PREDICT,
        '{"input": {"review": "ok", "state": "CA"}, "external_id": "\\ud800"}',
        tokens["app"],
    )
    assert resp.status_code == 422 and list(resp.json["error"]["details"]) == ["external_id"]
    assert cases(db) == before
    # A whole emoji (a surrogate pair in JSON) is valid text and is stored.
    ok = raw_post(
        client,
        PREDICT,
        '{"input": {"review": "great \\ud83d\\ude00", "state": "CA"}}',
        tokens["app"],
    )
    assert ok.status_code == 202, ok.json
    assert cases(db) == before + 1


def test_a_bad_batch_item_gets_its_error_in_place(client, tokens, task, db) -> None:
    items = [
        '{"input": {"review": "first", "state": "CA"}}',
        f'{{"input": {{"review": "{LONE}", "state": "CA"}}}}',
        '{"input": {"review": "third", "state": "NY"}}',
    ]
    resp = raw_post(client, PREDICT + "/batch", '{"items": [' + ",".join(items) + "]}",
                    tokens["app"])  # fmt: skip
    assert resp.status_code == 200, resp.json
    results = resp.json["results"]
    assert "case_id" in results[0] and "case_id" in results[2]
    assert list(results[1]["error"]["details"]) == ["items.1.input.review"]
    assert cases(db) == 2


def test_task_definitions_are_checked_too(client, tokens, db) -> None:
    body = json.dumps(dict(SIMPLE_TASK, labels=["good", "bad"])).replace('"bad"', '"b\\udc00"')
    resp = raw_post(client, "/api/v1/tasks", body, tokens["admin"])
    assert resp.status_code == 422 and list(resp.json["error"]["details"]) == ["labels.1"]
    assert db.scalar(select(func.count()).select_from(Task)) == 0


def test_deeply_nested_json_is_a_clear_400(client, tokens, task) -> None:
    body = '{"input": ' + "[" * 100_000 + "]" * 100_000 + "}"
    resp = raw_post(client, PREDICT, body, tokens["app"])
    assert resp.status_code == 400, resp.status_code
    assert resp.json["error"]["code"] == "bad_request"


def _poison(db: Any) -> str:
    """A case stored before this check existed: its text cannot be encoded as UTF-8."""
    from tests.export.conftest import _case

    task_row = db.scalar(select(Task).where(Task.name == "loan-review"))
    bad = _case(task_row, 1, input={"review": "a\ud800b", "state": "CA"})
    db.add_all([_case(task_row, 0), bad])
    db.flush()
    return str(bad.id)


def test_an_export_that_cannot_be_written_fails_loudly_then_repair_fixes_it(
    client, tokens, task, db
) -> None:
    bad_id = _poison(db)
    url = "/api/v1/tasks/loan-review/export"
    for fmt in ("csv", "jsonl", "parquet"):
        resp = client.get(url, query_string={"format": fmt}, headers=auth(tokens["analyst"]))
        assert resp.status_code == 500, (fmt, resp.status_code)
        assert resp.json["error"]["code"] == "export_failed"
    failed = db.scalars(select(AuditEvent).where(AuditEvent.action == "export.failed")).all()
    assert [e.details["format"] for e in failed] == ["csv", "jsonl", "parquet"]
    assert failed[0].details["error"] == "UnicodeEncodeError"

    # Only an admin may repair; the values are checked like any input.
    repair = f"/api/v1/cases/{bad_id}/repair"
    assert client.post(repair, json={"redact": ["review"]},
                       headers=auth(tokens["analyst"])).status_code == 403  # fmt: skip
    for body, field in (
        ({"redact": ["nope"]}, "nope"),
        ({"input": {"amount": "many"}}, "input"),
        ({"input": {"review": "x"}, "redact": ["review"]}, "review"),
        ({}, "input"),
    ):
        bad = client.post(repair, json=body, headers=auth(tokens["admin"]))
        assert bad.status_code == 422 and field in bad.json["error"]["details"], (body, bad.json)
    fixed = client.post(
        repair,
        json={"input": {"review": "a b"}, "redact": ["amount"]},
        headers=auth(tokens["admin"]),
    )
    assert fixed.status_code == 200, fixed.json
    assert fixed.json["input"]["review"] == "a b" and fixed.json["input"]["amount"] is None
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "case.repaired"))
    assert event.case_id == bad_id
    assert event.details == {"changed": ["review"], "redacted": ["amount"]}
    ok = client.get(url, query_string={"format": "csv"}, headers=auth(tokens["analyst"]))
    assert ok.status_code == 200 and ok.get_data().count(b"\n") == 3
