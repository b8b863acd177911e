"""docs/tasks.md and docs/examples/task.json cannot rot: the example creates a task, the
commented version says the same as the file, and every key the schema takes is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from service.schemas.tasks import (
    FieldSpecSchema,
    PolicySchema,
    ReviewSettingsSchema,
    TaskCreateSchema,
    WebhookSchema,
)
from tests.helpers import SIMPLE_TASK, auth

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "tasks.md"
EXAMPLE = ROOT / "docs" / "examples" / "task.json"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_commented_example_is_the_example_file():
    (commented,) = blocks("jsonc")
    # A comment is "//" after whitespace (a URL's "https://" is not one).
    plain = re.sub(r"\s+//\s.*$", "", commented, flags=re.M)
    assert json.loads(plain) == json.loads(EXAMPLE.read_text())


def test_the_example_file_creates_the_task_it_describes(client, tokens):
    definition = json.loads(EXAMPLE.read_text())
    resp = client.post("/api/v1/tasks", json=definition, headers=auth(tokens["admin"]))
    assert resp.status_code == 201, resp.json
    body = resp.json
    assert body["name"] == definition["name"] and body["labels"] == definition["labels"]
    assert body["policy"] == definition["policy"]  # every policy key set, none defaulted
    assert body["review"] == definition["review"]
    assert body["fields"][0] == definition["fields"][0]
    assert body["webhook"] == {"url": definition["webhook"]["url"]}


def test_the_smallest_documented_definition_is_valid(client, tokens):
    smallest = [json.loads(b) for b in blocks("json") if '"spam-filter"' in b]
    assert len(smallest) == 1
    resp = client.post("/api/v1/tasks", json=smallest[0], headers=auth(tokens["admin"]))
    assert resp.status_code == 201, resp.json


def test_the_documented_refusal_is_the_real_one(client, tokens):
    (documented,) = [json.loads(b) for b in blocks("json") if "could never learn" in b]
    example = json.loads(EXAMPLE.read_text())
    example["policy"]["cold_start_audit_rate"] = 1.0
    resp = client.post("/api/v1/tasks", json=example, headers=auth(tokens["admin"]))
    assert resp.status_code == 422
    assert resp.json["error"]["details"] == documented["error"]["details"]


def test_every_key_the_schema_takes_is_documented_and_set_in_the_example():
    text = DOC.read_text()
    example: dict[str, Any] = json.loads(EXAMPLE.read_text())
    schemas = {
        "top": (TaskCreateSchema, example),
        "fields": (FieldSpecSchema, example["fields"][0]),
        "policy": (PolicySchema, example["policy"]),
        "review": (ReviewSettingsSchema, example["review"]),
        "webhook": (WebhookSchema, example["webhook"]),
    }
    for part, (schema, shown) in schemas.items():
        for field in schema().fields.values():
            key = field.data_key or field.name
            assert f"| `{key}` |" in text, f"{part}.{key} has no row in docs/tasks.md"
            assert key in shown, f"{part}.{key} is not set in docs/examples/task.json"


def test_a_task_read_back_names_every_review_setting(client, tokens):
    """Optional review settings are shown with their default when not set (an integrator
    reading the task should not have to know which keys may be missing)."""
    created = client.post("/api/v1/tasks", json=SIMPLE_TASK, headers=auth(tokens["admin"]))
    assert created.status_code == 201
    read = client.get(f"/api/v1/tasks/{SIMPLE_TASK['name']}", headers=auth(tokens["admin"]))
    assert read.json["review"]["primary_fields"] == []
