"""Every API endpoint checks its role and task scope (derived from the app's URL map, so a
new endpoint is covered the day it is added)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.helpers import auth, good_input, make_token

ROLES = ("app", "reviewer", "analyst", "admin")
PUBLIC = {"/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"}


def api_endpoints(app: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.rule in PUBLIC:
            continue
        if rule.rule.startswith("/api/v1/docs"):
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            func = view
            view_class = getattr(view, "view_class", None)
            if view_class is not None:
                func = getattr(view_class, method.lower())
            roles = getattr(func, "_tandem_roles", None)
            assert roles is not None, f"{method} {rule.rule} has no role check"
            found.append((method, rule.rule, roles))
    return found


def fill(path: str, case_id: str) -> str:
    path = re.sub(r"<(?:string:)?task>", "loan-review", path)
    path = re.sub(r"<(?:string:)?case_id>", case_id, path)
    path = re.sub(r"<int:[a-z_]+>", "1", path)
    return re.sub(r"<(?:string:)?[a-z_]+>", "does-not-exist", path)


def call(client: Any, method: str, path: str, headers: dict[str, str]) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if method in ("POST", "PATCH", "PUT"):
        kwargs["json"] = {}
    return client.open(path, method=method, **kwargs)


@pytest.fixture
def case_id(client, tokens, task) -> str:
    resp = client.post(
        "/api/v1/tasks/loan-review/predict",
        json={"input": good_input()},
        headers=auth(tokens["app"]),
    )
    return resp.json["case_id"]


def test_every_endpoint_declares_roles_and_admin_is_always_allowed(flask_app):
    endpoints = api_endpoints(flask_app)
    assert len(endpoints) >= 6
    for _method, _rule, roles in endpoints:
        assert "admin" in roles


def test_missing_or_bad_token_is_401_everywhere(client, task, case_id):
    for method, rule, _ in api_endpoints(client.application):
        path = fill(rule, case_id)
        assert call(client, method, path, {}).status_code == 401, (method, rule)
        resp = call(client, method, path, {"Authorization": "Bearer tdm_not-a-token"})
        assert resp.status_code == 401, (method, rule)
        assert resp.json["error"]["code"] == "unauthorized"
        basic = call(client, method, path, {"Authorization": "Basic dXNlcjpwYXNz"})
        assert basic.status_code == 401, (method, rule)


def test_role_matrix(client, tokens, task, case_id):
    for method, rule, roles in api_endpoints(client.application):
        path = fill(rule, case_id)
        for role in ROLES:
            resp = call(client, method, path, auth(tokens[role]))
            if role in roles:
                if (
                    resp.status_code == 403
                    and resp.json["error"]["details"].get("actor") == "token"
                ):
                    continue  # reviewing needs a person (a user), whatever the token's role
                assert resp.status_code not in (401, 403), (role, method, rule, resp.json)
            else:
                assert resp.status_code == 403, (role, method, rule, resp.status_code)
                assert resp.json["error"]["code"] == "forbidden"


def test_task_scope_is_enforced(client, tokens, task, case_id):
    other = {
        "name": "other-task",
        "labels": ["x", "y"],
        "fields": [{"name": "t", "type": "text"}],
    }
    assert (
        client.post("/api/v1/tasks", json=other, headers=auth(tokens["admin"])).status_code == 201
    )
    scoped = {role: make_token(role, tasks=["other-task"]) for role in ROLES}
    for method, rule, roles in api_endpoints(client.application):
        if "<task>" not in rule and "<string:task>" not in rule and "case_id" not in rule:
            continue
        path = fill(rule, case_id)
        for role in roles:
            resp = call(client, method, path, auth(scoped[role]))
            assert resp.status_code == 403, (role, method, rule, resp.status_code)
    listing = client.get("/api/v1/tasks", headers=auth(scoped["app"]))
    assert [t["name"] for t in listing.json["tasks"]] == ["other-task"]


def test_revoked_token_is_refused(client, db, task):
    from service.models import ApiToken
    from service.services import accounts
    from service.services.audit import SYSTEM

    token = make_token("app", name="soon-revoked")
    ok = client.get("/api/v1/tasks", headers=auth(token))
    assert ok.status_code == 200
    row = db.query(ApiToken).filter_by(name="soon-revoked").one()
    assert row.last_used_at is not None
    accounts.revoke_token(db(), row.id, SYSTEM)
    db.commit()
    assert client.get("/api/v1/tasks", headers=auth(token)).status_code == 401


def test_a_reviewer_token_bound_to_a_user_can_claim_and_review(client, tokens, task, db):
    from service.services import accounts
    from service.services.audit import SYSTEM

    session = db()
    accounts.create_user(
        session,
        email="rev@example.com",
        password="long-enough-pw",
        role="reviewer",
        task_scope=None,
        actor=SYSTEM,
    )
    bound = accounts.create_token(
        session,
        role="reviewer",
        name="rev-tool",
        task_scope=None,
        actor=SYSTEM,
        user_email="rev@example.com",
    ).token
    session.commit()
    client.post(
        "/api/v1/tasks/loan-review/predict",
        json={"input": good_input()},
        headers=auth(tokens["app"]),
    )
    claimed = client.post("/api/v1/tasks/loan-review/queue/claim", headers=auth(bound))
    assert claimed.status_code == 200, claimed.json
    decided = client.post(
        f"/api/v1/cases/{claimed.json['case_id']}/review",
        json={"label": "good"},
        headers=auth(bound),
    )
    assert decided.status_code == 200, decided.json
    assert decided.json["label"] == "good" and decided.json["review_id"]
    resolved = client.get(f"/api/v1/cases/{claimed.json['case_id']}", headers=auth(tokens["app"]))
    assert resolved.json["status"] == "resolved"
    assert resolved.json["resolved_by"] == "reviewer"
    # an unbound reviewer token cannot hold a lease: reviews are decisions of people
    refused = client.post("/api/v1/tasks/loan-review/queue/claim", headers=auth(tokens["reviewer"]))
    assert refused.status_code == 403
    # a token never gets more rights than its person
    import pytest

    from service.errors import ValidationFailed

    with pytest.raises(ValidationFailed):
        accounts.create_token(
            session,
            role="admin",
            name="x",
            task_scope=None,
            actor=SYSTEM,
            user_email="rev@example.com",
        )
