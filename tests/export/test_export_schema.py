"""The OpenAPI document describes what the exports really send: every column of a file is a
property of ``ExportRow`` (or one of its task-named ``input.<field>``/``score.<label>``
columns), every JSON Lines row of the seeded feedback validates against it, and the filters
are the ones the export code accepts (service/schemas/export.py)."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
from sqlalchemy import select

from service.models import Task
from service.schemas.export import ExportFiltersSchema, ExportRowSchema
from service.services import export as export_service
from tests.helpers import auth, json_schema_of


def test_every_column_of_a_file_is_documented_in_file_order(app: Any, db: Any, seed: Any) -> None:
    task = db.scalar(select(Task).where(Task.name == seed.task.name))
    columns = [f.name for f in export_service.export_schema(task)]
    named = [c for c in columns if not c.startswith(("input.", "score."))]
    declared = [f.data_key or name for name, f in ExportRowSchema().fields.items()]
    # A new column is a field of ExportRowSchema, declared in the order the files have it.
    assert named == declared
    assert [c for c in columns if c.startswith("input.")] == [
        f"input.{f['name']}" for f in task.fields
    ]
    assert [c for c in columns if c.startswith("score.")] == [
        f"score.{label}" for label in task.labels
    ]


def test_jsonl_rows_validate_against_the_published_row_schema(
    client: Any, tokens: dict[str, str], seed: Any
) -> None:
    spec = client.get("/api/v1/openapi.json").json
    validator = jsonschema_rs.validator_for(
        json_schema_of({"$ref": "#/components/schemas/ExportRow", "components": spec["components"]})
    )
    resp = client.get(
        f"/api/v1/tasks/{seed.task.name}/export?format=jsonl", headers=auth(tokens["analyst"])
    )
    assert resp.status_code == 200
    rows = [json.loads(line) for line in resp.get_data(as_text=True).splitlines()]
    assert len(rows) == len(seed.cases)
    for row in rows:
        errors = [str(e) for e in validator.iter_errors(row)]
        assert not errors, (row, errors)
    # The schema is no rubber stamp: a wrong type in a named or a task-named column fails.
    assert not validator.is_valid({**rows[0], "audit": "yes"})
    assert not validator.is_valid({**rows[0], "score.good": [0.9]})


def test_the_documented_filters_are_the_accepted_ones(client: Any) -> None:
    spec = client.get("/api/v1/openapi.json").json
    names = {f.data_key or n for n, f in ExportFiltersSchema().fields.items()}
    assert names == set(export_service.FILTER_NAMES)
    stream = spec["paths"]["/api/v1/tasks/{task}/export"]["get"]
    query = {p["name"] for p in stream["parameters"] if p["in"] == "query"}
    assert query == names | {"format", "identity"}
