"""Fixtures for the review workflow: people who review, and queued cases."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import pytest

from service.models import User
from service.services.accounts import hash_password, user_actor

PASSWORD = "correct horse battery"
_HASH: dict[str, str] = {}


def make_user(session: Any, role: str = "reviewer", scope: list[str] | None = None) -> User:
    """A user row with a real (cached) argon2 hash: hashing once keeps 50-user tests fast."""
    if "h" not in _HASH:
        _HASH["h"] = hash_password(PASSWORD)
    user = User(
        email=f"{role}-{secrets.token_hex(4)}@example.com",
        password_hash=_HASH["h"],
        role=role,
        task_scope=scope,
        pseudonym="r_" + secrets.token_hex(6),
    )
    session.add(user)
    session.flush()
    return user


@pytest.fixture
def people(app: Any, db: Any) -> Callable[..., Any]:
    def _make(role: str = "reviewer", scope: list[str] | None = None) -> Any:
        user = make_user(db(), role, scope)
        db.commit()
        return user_actor(user)

    return _make


def queue_cases(task_name: str, n: int, **item: Any) -> list[str]:
    """Queue ``n`` cases through the real predict service (no model: all go to review)."""
    from service.services.audit import SYSTEM
    from service.services.predict import PredictRequest, predict_batch
    from service.uow import unit_of_work
    from tests.helpers import good_input

    ids: list[str] = []
    for start in range(0, n, 1000):
        items = [
            PredictRequest(input=good_input(review=f"case {i}"), external_id=f"x{i}", **item)
            for i in range(start, min(n, start + 1000))
        ]
        with unit_of_work() as session:
            results = predict_batch(session, task_name, items, SYSTEM)
        ids.extend(r["case_id"] for r in results)
    # Cold start draws audit flags at random; tests set the flags they need explicitly.
    from sqlalchemy import update

    from service.models import Case

    with unit_of_work() as session:
        session.execute(update(Case).where(Case.id.in_(ids)).values(audit=False))
    return ids


@pytest.fixture
def queued(task: dict[str, Any]) -> Callable[..., list[str]]:
    return lambda n=3, **item: queue_cases(task["name"], n, **item)


def csrf_from(html: str) -> str:
    import re

    match = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert match, "page has no CSRF meta tag"
    return match.group(1)


def login(client: Any, email: str, password: str = PASSWORD) -> dict[str, str]:
    """Sign in through the real login form; returns headers for the JSON API."""
    page = client.get("/login")
    token = csrf_from(page.get_data(as_text=True))
    resp = client.post("/login", data={"email": email, "password": password, "csrf_token": token})
    assert resp.status_code == 302, resp.get_data(as_text=True)[:500]
    home = client.get("/")
    return {"X-CSRFToken": csrf_from(home.get_data(as_text=True))}


@pytest.fixture
def browser_user(app: Any, db: Any) -> Callable[..., tuple[Any, dict[str, str], User]]:
    """A signed-in test client for a new user of the given role."""

    def _make(role: str = "reviewer", scope: list[str] | None = None) -> Any:
        user = make_user(db(), role, scope)
        db.commit()
        client = app.test_client()
        headers = login(client, user.email)
        return client, headers, user

    return _make
