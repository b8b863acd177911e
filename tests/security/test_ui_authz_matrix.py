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
    "review_ui.queue_page": {"reviewer", "analyst"},
    "review_ui.case_page": {"reviewer", "analyst"},
    "review_ui.dashboard": {"analyst"},
    "review_ui.export_page": {"analyst"},
    "review_ui.admin_users": set(),
    "review_ui.admin_tokens": set(),
    "review_ui.admin_revoke_token": set(),
    "review_ui.admin_policy": set(),
}
PUBLIC = {"review_ui.login", "review_ui.static"}
TASK_PAGES = {
    "review_ui.review_page",
    "review_ui.queue_page",
    "review_ui.dashboard",
    "review_ui.export_page",
    "review_ui.case_page",
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
    )


@pytest.fixture
def setup(client: Any, tokens: dict[str, str], task: Any, flask_app: Any) -> dict[str, Any]:
    from service.db import transaction
    from service.services.accounts import create_user

    other = dict(SIMPLE_TASK, name="other-task")
    assert (
        client.post("/api/v1/tasks", json=other, headers=auth(tokens["admin"])).status_code == 201
    )
    with transaction() as session:
        for role in ROLES:
            create_user(
                session,
                email=f"{role}@ui.example",
                password=PASSWORD,
                role=role,
                task_scope=None,
                actor=SYSTEM,
            )
            create_user(
                session,
                email=f"{role}-scoped@ui.example",
                password=PASSWORD,
                role=role,
                task_scope=["other-task"],
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
