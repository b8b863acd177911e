"""Helpers shared by the tests (plain functions; fixtures live in conftest.py)."""

from __future__ import annotations

from typing import Any


def make_token(role: str, tasks: list[str] | None = None, name: str | None = None) -> str:
    from service.db import transaction
    from service.services.accounts import create_token
    from service.services.audit import SYSTEM

    with transaction() as session:
        return create_token(
            session, role=role, name=name or f"test-{role}", task_scope=tasks, actor=SYSTEM
        ).token


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


SIMPLE_TASK: dict[str, Any] = {
    "name": "loan-review",
    "labels": ["good", "bad"],
    "fields": [
        {"name": "review", "type": "text"},
        {"name": "state", "type": "category"},
        {"name": "amount", "type": "number", "required": False},
        {"name": "verified", "type": "boolean", "required": False},
    ],
}


def good_input(**overrides: Any) -> dict[str, Any]:
    values = {
        "review": "Paid back on time, stable job.",
        "state": "CA",
        "amount": 1200.5,
        "verified": True,
    }
    values.update(overrides)
    return values
