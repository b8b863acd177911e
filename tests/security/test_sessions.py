"""Sessions end on the server (issue #16, item 5): logout, deactivation and a password reset
end every session and token of the person at once; admins do it from the API and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from service.models import AuditEvent, User
from service.services.audit import SYSTEM
from tests.helpers import auth, make_token

PASSWORD = "correct horse battery"


@pytest.fixture
def people(flask_app: Any, db: Any, redis_conn: Any, task: Any) -> Iterator[dict[str, Any]]:
    from service.services.accounts import create_token, create_user
    from service.uow import unit_of_work

    with unit_of_work() as session:
        ids = {}
        for email, role, scope in (
            ("ann@example.com", "reviewer", None),
            ("boss@example.com", "admin", None),
            ("local@example.com", "admin", ["loan-review"]),
        ):
            ids[email] = create_user(
                session, email=email, password=PASSWORD, role=role, task_scope=scope,
                actor=SYSTEM,
            ).id  # fmt: skip
        ann_token = create_token(
            session, role="reviewer", name="ann-tool", task_scope=None, actor=SYSTEM,
            user_email="ann@example.com",
        ).token  # fmt: skip
    flask_app.config["WTF_CSRF_ENABLED"] = False
    yield {"ids": ids, "ann_token": ann_token, "admin": make_token("admin")}
    flask_app.config["WTF_CSRF_ENABLED"] = True


def signed_in(app: Any, email: str, password: str = PASSWORD) -> Any:
    client = app.test_client()
    resp = client.post("/login", data={"email": email, "password": password})
    assert resp.status_code == 302, resp.status_code
    return client


def copy_of(app: Any, client: Any) -> Any:
    """Another browser holding the same saved session cookie."""
    other = app.test_client()
    cookie = client.get_cookie("tandem_session")
    other.set_cookie("tandem_session", cookie.value)
    return other


def works(client: Any) -> bool:
    ui = client.get("/")
    api = client.get("/api/v1/tasks")
    assert (ui.status_code == 200) == (api.status_code == 200), (ui.status_code, api.status_code)
    return ui.status_code == 200


def test_a_cookie_saved_before_logout_stops_working(flask_app: Any, people: Any) -> None:
    browser = signed_in(flask_app, "ann@example.com")
    saved = copy_of(flask_app, browser)
    assert works(browser) and works(saved)
    assert browser.post("/logout").status_code == 302
    assert not works(saved)  # before: it kept working for up to 8 hours
    assert works(signed_in(flask_app, "ann@example.com"))  # signing in again is fine


def test_deactivation_ends_sessions_and_tokens_and_reactivation_lets_them_sign_in(
    flask_app: Any, people: Any, db: Any
) -> None:
    client = flask_app.test_client()
    browser = signed_in(flask_app, "ann@example.com")
    ann = people["ids"]["ann@example.com"]
    assert client.get("/api/v1/tasks", headers=auth(people["ann_token"])).status_code == 200
    resp = client.post(f"/api/v1/users/{ann}/deactivate", headers=auth(people["admin"]))
    assert resp.status_code == 200 and resp.json["active"] is False
    assert not works(browser)
    assert client.get("/api/v1/tasks", headers=auth(people["ann_token"])).status_code == 401
    refused = client.post("/login", data={"email": "ann@example.com", "password": PASSWORD})
    assert refused.status_code == 401
    back = client.post(f"/api/v1/users/{ann}/reactivate", headers=auth(people["admin"]))
    assert back.status_code == 200 and back.json["active"] is True
    assert works(signed_in(flask_app, "ann@example.com"))
    assert client.get("/api/v1/tasks", headers=auth(people["ann_token"])).status_code == 401
    actions = db.scalars(select(AuditEvent.action).where(AuditEvent.action.like("user.%"))).all()
    assert {"user.deactivated", "user.reactivated"} <= set(actions)


def test_a_password_reset_ends_every_session_and_token(
    flask_app: Any, people: Any, db: Any
) -> None:
    client = flask_app.test_client()
    browser = signed_in(flask_app, "ann@example.com")
    ann = people["ids"]["ann@example.com"]
    short = client.post(f"/api/v1/users/{ann}/password", json={"password": "short"},
                        headers=auth(people["admin"]))  # fmt: skip
    assert short.status_code == 422 and "password" in short.json["error"]["details"]
    assert works(browser)
    resp = client.post(
        f"/api/v1/users/{ann}/password",
        json={"password": "a new long password"},
        headers=auth(people["admin"]),
    )
    assert resp.status_code == 200
    assert not works(browser)
    assert client.get("/api/v1/tasks", headers=auth(people["ann_token"])).status_code == 401
    old = client.post("/login", data={"email": "ann@example.com", "password": PASSWORD})
    assert old.status_code == 401
    assert works(signed_in(flask_app, "ann@example.com", "a new long password"))
    event = db.scalar(select(AuditEvent).where(AuditEvent.action == "user.password_reset"))
    assert event.details["tokens_revoked"] == 1 and "new long" not in str(event.details)


def test_admins_manage_only_accounts_within_their_scope(flask_app: Any, people: Any) -> None:
    from service.services.accounts import create_token
    from service.uow import unit_of_work

    with unit_of_work() as session:
        local = create_token(
            session, role="admin", name="local-admin", task_scope=["loan-review"], actor=SYSTEM,
            user_email="local@example.com",
        ).token  # fmt: skip
    client = flask_app.test_client()
    boss = people["ids"]["boss@example.com"]
    assert client.post(f"/api/v1/users/{boss}/deactivate",
                       headers=auth(local)).status_code == 404  # fmt: skip
    listed = client.get("/api/v1/users", headers=auth(local)).json["users"]
    assert [u["email"] for u in listed] == ["local@example.com"]
    me = people["ids"]["local@example.com"]
    assert client.post(f"/api/v1/users/{me}/deactivate", headers=auth(local)).status_code == 409
    everyone = client.get("/api/v1/users", headers=auth(people["admin"])).json["users"]
    assert {u["email"] for u in everyone} >= {"ann@example.com", "boss@example.com"}


def test_the_cli_deactivates_reactivates_and_resets(
    settings: Any, committed_db: Any, redis_conn: Any
) -> None:
    import subprocess
    import sys

    from service.services.accounts import create_user
    from service.uow import unit_of_work
    from tests.conftest import backend_env

    with unit_of_work() as session:
        create_user(session, email="cli@example.com", password=PASSWORD, role="reviewer",
                    task_scope=None, actor=SYSTEM)  # fmt: skip
    committed_db.remove()

    def tandem(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tandem.cli", "user", *args],
            input=stdin, capture_output=True, text=True, env=backend_env(settings), timeout=120,
        )  # fmt: skip

    def state() -> tuple[bool, int]:
        committed_db.remove()
        user = committed_db.scalar(select(User).where(User.email == "cli@example.com"))
        out = (bool(user.active), int(user.session_epoch))
        committed_db.remove()
        return out

    assert state() == (True, 0)
    assert tandem("deactivate", "cli@example.com").returncode == 0
    assert state() == (False, 1)
    assert tandem("reactivate", "cli@example.com").returncode == 0
    assert state() == (True, 1)
    reset = tandem("reset-password", "cli@example.com", "--password-stdin", stdin="brand new pw\n")
    assert reset.returncode == 0, reset.stderr
    assert state() == (True, 2)
    missing = tandem("deactivate", "nobody@example.com")
    assert missing.returncode != 0 and "nobody@example.com" in missing.stderr


def test_a_bound_token_stops_at_once_when_another_process_deactivates_its_person(
    flask_app: Any, people: Any, engine: Any, db: Any
) -> None:
    """The command line runs in its own process and cannot clear a web process's token
    cache: a token acting for a person is therefore never cached."""
    from sqlalchemy import update

    client = flask_app.test_client()
    token = people["ann_token"]
    assert client.get("/api/v1/tasks", headers=auth(token)).status_code == 200  # seen now
    db.execute(update(User).where(User.email == "ann@example.com").values(active=False))
    db.flush()  # as `tandem user deactivate` would commit from another process
    assert client.get("/api/v1/tasks", headers=auth(token)).status_code == 401


def test_only_an_admin_of_every_task_creates_tasks(flask_app: Any, people: Any) -> None:
    from service.services.accounts import create_token
    from service.uow import unit_of_work

    with unit_of_work() as session:
        local = create_token(
            session, role="admin", name="local", task_scope=["loan-review"], actor=SYSTEM
        ).token
    body = {"name": "squatted", "labels": ["a", "b"], "fields": [{"name": "t", "type": "text"}]}
    client = flask_app.test_client()
    assert client.post("/api/v1/tasks", json=body, headers=auth(local)).status_code == 403
    assert client.post("/api/v1/tasks", json=body, headers=auth(people["admin"])).status_code == 201
