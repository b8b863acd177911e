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


def make_runner(operation: Any, headers: dict[str, str]) -> Any:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    return run


def test_openapi_fuzz_every_operation_and_role(client: Any, fuzz_setup: dict[str, Any]) -> None:
    app = client.application
    ops = operations(app)
    assert len(ops) >= 15
    failures: list[str] = []
    for operation in ops:
        for role in ROLES:
            headers = auth(fuzz_setup["tokens"][role])
            run = make_runner(operation, headers)
            try:
                run()
            except (Exception, BaseExceptionGroup) as exc:  # collect all, report together
                failures.append(
                    f"{role} {operation.method.upper()} {operation.path}: {str(exc)[:1500]}"
                )
    assert not failures, "\n\n".join(failures)
