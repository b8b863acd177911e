"""Role x UI page x task scope: every ``review_ui.*`` endpoint, every role, anonymous."""

from __future__ import annotations

from typing import Any

import pytest

from service.services.audit import SYSTEM
from tests.helpers import SIMPLE_TASK, auth

PASSWORD = "correct horse battery"
ROLES = ("app", "reviewer", "analyst", "admin")

#: Who may open each page (admins always). A new UI endpoint fails the test until it is
#: listed here, so nobody adds a page without deciding who may see it.
ALLOWED: dict[str, set[str]] = {
    "review_ui.index": {"reviewer", "analyst"},
    "review_ui.review_page": {"reviewer"},
    "review_ui.review_progress": {"reviewer"},
    "review_ui.queue_page": {"reviewer", "analyst"},
    "review_ui.case_page": {"reviewer", "analyst"},
    "review_ui.dashboard": {"analyst"},
    "review_ui.export_page": {"analyst"},
    "review_ui.admin_users": set(),
    "review_ui.admin_tokens": set(),
    "review_ui.admin_revoke_token": set(),
    "review_ui.admin_confirm_revoke_token": set(),
    "review_ui.admin_user": set(),
    "review_ui.admin_user_access": set(),
    "review_ui.admin_user_deactivate": set(),
    "review_ui.admin_user_reactivate": set(),
    "review_ui.admin_user_password": set(),
    "review_ui.admin_policy": set(),
    "review_ui.help_page": {"reviewer", "analyst"},
    "review_ui.review_case": {"reviewer"},
    "review_ui.queue_release": set(),
}
PUBLIC = {"review_ui.login", "review_ui.static", "review_ui.favicon"}
TASK_PAGES = {
    "review_ui.review_page",
    "review_ui.review_progress",
    "review_ui.queue_page",
    "review_ui.dashboard",
    "review_ui.export_page",
    "review_ui.case_page",
    "review_ui.queue_release",
    "review_ui.review_case",
}


def ui_rules(app: Any) -> list[tuple[str, str, str]]:
    out = []
    for rule in app.url_map.iter_rules():
        if not rule.endpoint.startswith("review_ui.") or rule.endpoint in PUBLIC:
            continue
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((rule.endpoint, method, rule.rule))
    return out


def fill(rule: str, case_id: str) -> str:
    return (
        rule.replace("<string:task>", "loan-review")
        .replace("<string:case_id>", case_id)
        .replace("<int:token_id>", "999999")
        .replace("<int:user_id>", "999999")
    )


@pytest.fixture
def setup(client: Any, tokens: dict[str, str], task: Any, flask_app: Any) -> dict[str, Any]:
    from service.models import User
    from service.services.accounts import create_user, hash_password
    from service.uow import unit_of_work

    other = dict(SIMPLE_TASK, name="other-task")
    assert (
        client.post("/api/v1/tasks", json=other, headers=auth(tokens["admin"])).status_code == 201
    )
    with unit_of_work() as session:
        for role in ROLES:
            for email, scope in (
                (f"{role}@ui.example", None),
                (f"{role}-scoped@ui.example", ["other-task"]),
            ):
                if role == "app":
                    # No account gets the app role any more (accounts.create_user refuses it);
                    # one created before that still exists, and must open no page.
                    session.add(
                        User(
                            email=email,
                            password_hash=hash_password(PASSWORD),
                            role=role,
                            task_scope=scope,
                            pseudonym="r_" + role + str(len(email)),
                        )
                    )
                    continue
                create_user(
                    session,
                    email=email,
                    password=PASSWORD,
                    role=role,
                    task_scope=scope,
                    actor=SYSTEM,
                )
    case = client.post(
        "/api/v1/tasks/loan-review/predict",
        json={"input": {"review": "ok", "state": "CA"}},
        headers=auth(tokens["app"]),
    )
    flask_app.config["WTF_CSRF_ENABLED"] = False
    yield {"case_id": case.json["case_id"]}
    flask_app.config["WTF_CSRF_ENABLED"] = True


def signed_in(app: Any, email: str) -> Any:
    c = app.test_client()
    resp = c.post("/login", data={"email": email, "password": PASSWORD})
    assert resp.status_code == 302, (email, resp.status_code)
    return c


def call(c: Any, method: str, path: str) -> Any:
    return c.open(path, method=method, data={} if method == "POST" else None)


def test_every_ui_endpoint_is_in_the_matrix(flask_app: Any) -> None:
    endpoints = {e for e, _, _ in ui_rules(flask_app)} - {"review_ui.logout"}
    assert endpoints == set(ALLOWED)


def test_anonymous_is_sent_to_login(client: Any, setup: dict[str, Any], redis_conn: Any) -> None:
    for endpoint, method, rule in ui_rules(client.application):
        resp = call(client, method, fill(rule, setup["case_id"]))
        assert resp.status_code == 302, (endpoint, method, resp.status_code)
        assert "/login" in resp.headers["Location"], endpoint


def test_roles_see_only_their_pages(client: Any, setup: dict[str, Any], redis_conn: Any) -> None:
    app = client.application
    for role in ROLES:
        c = signed_in(app, f"{role}@ui.example")
        for endpoint, method, rule in ui_rules(app):
            if endpoint == "review_ui.logout":
                continue
            resp = call(c, method, fill(rule, setup["case_id"]))
            allowed = role == "admin" or role in ALLOWED[endpoint]
            if allowed:
                assert resp.status_code not in (401, 403), (role, endpoint, resp.status_code)
                assert resp.status_code < 500, (role, endpoint, resp.status_code)
                if resp.status_code == 302:
                    assert "/login" not in resp.headers["Location"], (role, endpoint)
            else:
                assert resp.status_code == 403, (role, endpoint, method, resp.status_code)


def test_task_scope_hides_other_tasks_pages(
    client: Any, setup: dict[str, Any], redis_conn: Any
) -> None:
    app = client.application
    for role in ("reviewer", "analyst"):
        c = signed_in(app, f"{role}-scoped@ui.example")
        for endpoint, method, rule in ui_rules(app):
            if endpoint not in TASK_PAGES or role not in ALLOWED[endpoint] or method != "GET":
                continue
            resp = call(c, method, fill(rule, setup["case_id"]))
            assert resp.status_code in (403, 404), (role, endpoint, resp.status_code)


def test_a_scoped_admin_grants_nothing_beyond_its_scope(
    client: Any, setup: dict[str, Any], tokens: dict[str, str], redis_conn: Any
) -> None:
    """Issue #16: an admin limited to other-task made itself an unscoped admin (a token, a
    user), revoked a global admin's token and saw every account. Nobody grants more than
    they hold, and admin pages show only what the admin's scope covers."""
    from sqlalchemy import func, select

    from service.db import db_session
    from service.models import ApiToken, User

    def count(model: Any) -> int:
        db_session.remove()
        return int(db_session().scalar(select(func.count()).select_from(model)) or 0)

    c = signed_in(client.application, "admin-scoped@ui.example")
    tokens_before, users_before = count(ApiToken), count(User)
    refused = [
        ("/admin/tokens", {"name": "x", "role": "admin", "task_scope": ""}),
        ("/admin/tokens", {"name": "x", "role": "app", "task_scope": "loan-review"}),
        ("/admin/tokens", {"name": "x", "role": "app", "task_scope": "other-task,loan-review"}),
        ("/admin/tokens", {"name": "x", "role": "app", "task_scope": "no-such-task"}),
        ("/admin/users", {"email": "a@x.example", "password": PASSWORD, "role": "admin",
                          "task_scope": "", "all_tasks": "1"}),
        ("/admin/users", {"email": "b@x.example", "password": PASSWORD, "role": "analyst",
                          "task_scope": "loan-review"}),
    ]  # fmt: skip
    for path, form in refused:
        resp = c.post(path, data=form, follow_redirects=True)
        assert resp.status_code == 200, (path, form)
        assert "only grant access to your own tasks" in resp.get_data(as_text=True), (path, form)
    assert (count(ApiToken), count(User)) == (tokens_before, users_before)
    # Within its scope it works.
    ok = c.post("/admin/tokens", data={"name": "mine", "role": "app", "task_scope": "other-task"})
    assert ok.status_code == 302 and count(ApiToken) == tokens_before + 1  # then GET (PRG)
    made = c.post(
        "/admin/users",
        data={"email": "c@x.example", "password": PASSWORD, "role": "reviewer",
              "task_scope": "other-task"},
    )  # fmt: skip
    assert made.status_code == 302 and count(User) == users_before + 1
    # A global admin's token is neither listed nor revocable.
    db_session.remove()
    global_admin = db_session().scalar(select(ApiToken.id).where(ApiToken.name == "test-admin"))
    assert c.post(f"/admin/tokens/{global_admin}/revoke").status_code == 302
    db_session.remove()
    assert db_session().get(ApiToken, global_admin).revoked_at is None
    tokens_page = c.get("/admin/tokens").get_data(as_text=True)
    assert "test-admin" not in tokens_page and "mine" in tokens_page
    users_page = c.get("/admin/users").get_data(as_text=True)
    assert "admin@ui.example" not in users_page and "reviewer@ui.example" not in users_page
    assert "c@x.example" in users_page and "admin-scoped@ui.example" in users_page
    # The global admin still sees and manages everything.
    g = signed_in(client.application, "admin@ui.example")
    assert "admin-scoped@ui.example" in g.get("/admin/users").get_data(as_text=True)
    assert "test-admin" in g.get("/admin/tokens").get_data(as_text=True)


def test_grants_are_checked_in_the_service_for_every_entry_point(db: Any, task: Any) -> None:
    from service.errors import Forbidden, NotFound
    from service.services.accounts import create_token, create_user
    from service.services.audit import Actor

    scoped = Actor(kind="user", id=None, name="s", role="admin", task_scope=("loan-review",))
    reviewer = Actor(kind="user", id=None, name="r", role="reviewer", task_scope=None)
    with pytest.raises(Forbidden):
        create_token(db, role="admin", name="t", task_scope=None, actor=scoped)
    with pytest.raises(Forbidden):
        create_token(db, role="admin", name="t", task_scope=["loan-review"], actor=reviewer)
    with pytest.raises(Forbidden):
        create_user(db, email="u@x.example", password=PASSWORD, role="analyst",
                    task_scope=None, actor=scoped)  # fmt: skip
    create_user(db, email="global@x.example", password=PASSWORD, role="analyst",
                task_scope=None, actor=SYSTEM)  # fmt: skip
    with pytest.raises(NotFound):  # binding to an account outside the scope
        create_token(db, role="analyst", name="t", task_scope=["loan-review"], actor=scoped,
                     user_email="global@x.example")  # fmt: skip
    made = create_token(db, role="app", name="ok", task_scope=["loan-review"], actor=scoped)
    assert made.token.startswith("tdm_")
