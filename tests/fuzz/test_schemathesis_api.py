"""Schemathesis over /api/v1/openapi.json (WSGI, in-process) for every operation and role:
no 5xx, and every response conforms to the documented status codes, content type and
schema. Bounded: a few examples per operation and role."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers import auth, good_input

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = int(os.environ.get("TANDEM_FUZZ_EXAMPLES", "12"))
ROLES = ("app", "reviewer", "analyst", "admin")


@pytest.fixture
def fuzz_setup(client: Any, tokens: dict[str, str], task: Any) -> dict[str, Any]:
    case = client.post(
        "/api/v1/tasks/loan-review/predict",
        json={"input": good_input()},
        headers=auth(tokens["app"]),
    )
    assert case.status_code in (200, 202)
    return {"tokens": tokens, "case_id": case.json["case_id"]}


def operations(app: Any) -> list[Any]:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    return [result.ok() for result in schema.get_all_operations()]


LOOPBACK_HOOK = "http://127.0.0.1:9/fuzz-hook"


def loopback_webhooks(case: Any) -> Any:
    """Task bodies may carry a webhook: whatever URL was generated, point it at a closed
    loopback port, so a fuzzed task can never make anything send traffic off this machine."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("webhook"), dict):
        body["webhook"]["url"] = LOOPBACK_HOOK
    return case


def make_runner(operation: Any, headers: dict[str, str], statuses: list[int]) -> Any:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy().map(loopback_webhooks))
    def run(case: Any) -> None:
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        statuses.append(response.status_code)

    return run


def test_openapi_fuzz_every_operation_and_role(client: Any, fuzz_setup: dict[str, Any]) -> None:
    app = client.application
    ops = operations(app)
    assert len(ops) >= 15
    covered = {(op.method.upper(), op.path) for op in ops}
    # Task creation and changes (webhooks included) are fuzzed too, their URLs on loopback.
    assert {("POST", "/api/v1/tasks"), ("PATCH", "/api/v1/tasks/{task}")} <= covered
    failures: list[str] = []
    statuses: dict[tuple[str, str, str], list[int]] = {}
    for operation in ops:
        for role in ROLES:
            headers = auth(fuzz_setup["tokens"][role])
            seen = statuses.setdefault((role, operation.method.upper(), operation.path), [])
            run = make_runner(operation, headers, seen)
            try:
                run()
            except (Exception, BaseExceptionGroup) as exc:  # collect all, report together
                failures.append(
                    f"{role} {operation.method.upper()} {operation.path}: {str(exc)[:1500]}"
                )
    assert not failures, "\n\n".join(failures)
    # Not only refusals: the fuzzer really created tasks with generated definitions.
    assert 201 in statuses[("admin", "POST", "/api/v1/tasks")], statuses[
        ("admin", "POST", "/api/v1/tasks")
    ]
