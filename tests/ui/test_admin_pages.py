"""Admin pages an operator can run a team with (issue #19, points 9–11 and "Small"), in a real
headless Chromium: tokens are created once (Post/Redirect/Get), copied and revoked after a
confirmation; users are deactivated, re-scoped, re-roled and given a new password from the
page; the policy page says what it saved; errors are pages; the favicon is served; a wrong
password puts the cursor back in the password field (docs/review.md, "Pages")."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from sqlalchemy import func, select

from service.db import db_session
from service.models import ApiToken, AuditEvent, Task, User
from service.schemas.tasks import TaskCreateSchema
from service.services.accounts import create_token, create_user
from service.services.audit import SYSTEM
from service.services.tasks import create_task
from service.uow import unit_of_work
from tests.helpers import SIMPLE_TASK
from tests.ui.conftest import shot

pytestmark = pytest.mark.browser
PASSWORD = "admin-password-1"
ADMIN = "boss@example.com"
ANN = "ann@example.com"
NAME = SIMPLE_TASK["name"]


def _setup() -> str:
    """A task, an unscoped admin and a reviewer with a token of her own; the reviewer's
    token is returned."""
    with unit_of_work() as session:
        create_task(session, TaskCreateSchema().load(SIMPLE_TASK), SYSTEM)
        create_task(session, TaskCreateSchema().load(dict(SIMPLE_TASK, name="claims")), SYSTEM)
        for email, role in ((ADMIN, "admin"), (ANN, "reviewer")):
            create_user(
                session, email=email, password=PASSWORD, role=role, task_scope=None, actor=SYSTEM
            )
        return create_token(
            session, role="reviewer", name="ann-tool", task_scope=None, actor=SYSTEM,
            user_email=ANN,
        ).token  # fmt: skip


def _errors(page: Any) -> list[str]:
    """Console errors of a page from now on (CSP violations and failed loads included)."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return errors


def _api_status(base: str, path: str, token: str) -> int:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _events(action: str) -> list[dict[str, Any]]:
    db_session.remove()
    rows = (
        db_session()
        .scalars(
            select(AuditEvent.details).where(AuditEvent.action == action).order_by(AuditEvent.id)
        )
        .all()
    )
    db_session.remove()
    return list(rows)


def _read(statement: Any) -> Any:
    """One value, read outside the server's requests (the read's transaction ends at once,
    so SQLite is never left locked under the live server)."""
    db_session.remove()
    try:
        return db_session().scalar(statement)
    finally:
        db_session.remove()


def _flash(page: Any) -> str:
    return " ".join(page.locator(".flash").all_inner_texts())


# ---------------------------------------------------------------------------- tokens (9)


def test_a_token_is_created_once_copied_and_revoked_after_a_confirmation(page_for, live_server):
    _setup()
    page = page_for(ADMIN, PASSWORD, permissions=["clipboard-read", "clipboard-write"])
    errors = _errors(page)
    page.goto(live_server + "/admin/tokens")
    page.fill("#name", "crm-integration")
    page.select_option("#role", "app")
    with page.expect_navigation():
        page.click("text=Create token")
    secret = page.input_value("#new-token")
    assert secret.startswith("tdm_")
    assert page.url == live_server + "/admin/tokens" and secret not in page.url

    # A reload neither shows the secret again nor creates a second token.
    page.reload()
    page.wait_for_selector("h1:has-text('API tokens')")
    assert page.locator("#new-token").count() == 0 and secret not in page.content()
    made = _read(select(func.count(ApiToken.id)).where(ApiToken.name == "crm-integration"))
    assert made == 1, "the reload created a second token"

    # Another one, copied with the Clipboard API: the button says it worked.
    page.fill("#name", "reporting")
    with page.expect_navigation():
        page.click("text=Create token")
    other = page.input_value("#new-token")
    assert other.startswith("tdm_") and other != secret
    page.click("button:has-text('Copy')")
    page.wait_for_selector("button.copy:has-text('Copied')")
    assert page.evaluate("navigator.clipboard.readText()") == other

    # Revoke asks first; cancelling keeps the token.
    page.click("[aria-label='Revoke token crm-integration']")
    page.wait_for_selector("h1:has-text('Revoke token')")
    assert "crm-integration" in page.locator("main").inner_text()
    shot(page, "admin-token-revoke")
    page.click("text=Cancel")
    page.wait_for_selector("h1:has-text('API tokens')")
    assert _api_status(live_server, "/api/v1/tasks", secret) == 200
    page.click("[aria-label='Revoke token crm-integration']")
    with page.expect_navigation():
        page.click("button:has-text('Revoke token')")
    said = _flash(page)
    assert "crm-integration" in said and secret[:10] in said and "revoked" in said
    assert _api_status(live_server, "/api/v1/tasks", secret) == 401
    assert errors == []


# ----------------------------------------------------------------------------- users (10)


def test_an_admin_runs_a_team_from_the_users_page(page_for, live_server):
    ann_token = _setup()
    ann = page_for(ANN, PASSWORD)
    page = page_for(ADMIN, PASSWORD)
    errors = _errors(page)
    page.goto(live_server + "/admin/users")
    page.click(f"[aria-label='Manage {ANN}']")
    page.wait_for_selector(f"h1:has-text('{ANN}')")
    shot(page, "admin-user")

    # Role and tasks: one save, one audit event each, before and after.
    page.select_option("#role", "analyst")
    page.fill("#task_scope", NAME)
    with page.expect_navigation():
        page.click("button:has-text('Save role and tasks')")
    assert "analyst" in _flash(page) and NAME in _flash(page)
    assert _events("user.role_changed")[-1]["before"] == {"role": "reviewer"}
    assert _events("user.role_changed")[-1]["after"] == {"role": "analyst"}
    assert _events("user.scope_changed")[-1]["after"] == {"task_scope": [NAME]}
    ann.goto(live_server + f"/tasks/{NAME}/dashboard")  # the session sees the new role at once
    assert ann.locator("h1").first.inner_text() != "403"
    # The reviewer token of a person who is no longer a reviewer stopped with the change.
    assert _api_status(live_server, "/api/v1/tasks", ann_token) == 401

    # An unknown task is refused by name; nothing changes.
    page.fill("#task_scope", "nope")
    with page.expect_navigation():
        page.click("button:has-text('Save role and tasks')")
    assert "nope" in _flash(page)
    assert _read(select(User.task_scope).where(User.email == ANN)) == [NAME]
    # An emptied field is refused, not read as every task; "Every task" is a box of its own
    # (a task may be named "all"), and each of the two clears the other.
    page.fill("#task_scope", "")
    assert not page.is_checked("#all_tasks")
    with page.expect_navigation():
        page.click("button:has-text('Save role and tasks')")
    assert "Nothing changed: name at least one task, or give every task" in _flash(page)
    assert _read(select(User.task_scope).where(User.email == ANN)) == [NAME]
    page.check("#all_tasks")
    assert page.input_value("#task_scope") == ""
    with page.expect_navigation():
        page.click("button:has-text('Save role and tasks')")
    assert f"tasks: {NAME} → every task" in _flash(page)
    assert _read(select(User.task_scope).where(User.email == ANN)) is None
    assert page.is_checked("#all_tasks") and page.input_value("#task_scope") == ""
    page.fill("#task_scope", NAME)
    assert not page.is_checked("#all_tasks")
    with page.expect_navigation():
        page.click("button:has-text('Save role and tasks')")
    assert _read(select(User.task_scope).where(User.email == ANN)) == [NAME]

    # Deactivate: her open session ends at once; reactivate lets her sign in again.
    with page.expect_navigation():
        page.click("button:has-text('Deactivate')")
    assert "deactivated" in _flash(page)
    ann.goto(live_server + "/")
    assert "/login" in ann.url
    assert _events("user.deactivated")[-1]["after"] == {"active": False}
    with page.expect_navigation():
        page.click("button:has-text('Reactivate')")
    assert "reactivated" in _flash(page)

    # A new password: the old one stops working.
    page.fill("#new_password", "brand-new-password")
    with page.expect_navigation():
        page.click("button:has-text('Set password')")
    assert "password" in _flash(page)
    assert _events("user.password_reset")
    ann.goto(live_server + "/login")
    ann.fill("#email", ANN)
    ann.fill("#password", "brand-new-password")
    with ann.expect_navigation():
        ann.keyboard.press("Enter")
    assert ann.url == live_server + "/"

    # The last active admin cannot demote themselves: said clearly, nothing changes.
    page.goto(live_server + "/admin/users")
    page.click(f"[aria-label='Manage {ADMIN}']")
    page.select_option("#role", "reviewer")
    with page.expect_navigation():
        page.click("button:has-text('Save role and tasks')")
    assert "last active admin" in _flash(page)
    assert _read(select(User.role).where(User.email == ADMIN)) == "admin"
    assert errors == []


def test_a_new_accounts_tasks_are_named_or_every_task_and_a_refusal_keeps_the_form(
    page_for, live_server
):
    """Outside tries: an emptied Tasks field gave every task; the word "all" could not be
    told from a task named "all" (saving a role change widened that person to every task);
    and a refused new account came back as an empty form whose defaults granted every
    task."""
    _setup()
    with unit_of_work() as session:
        create_task(session, TaskCreateSchema().load(dict(SIMPLE_TASK, name="all")), SYSTEM)
        create_user(
            session, email="only-all@example.com", password=PASSWORD, role="reviewer",
            task_scope=["all"], actor=SYSTEM,
        )  # fmt: skip
    phone = page_for(ADMIN, PASSWORD, width=390, height=844)
    phone.goto(live_server + "/admin/users")
    # The table scrolls in its own box; the page itself does not scroll sideways.
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    page = page_for(ADMIN, PASSWORD)
    errors = _errors(page)
    page.goto(live_server + "/admin/users")
    assert page.is_checked("#all_tasks") and page.input_value("#task_scope") == ""
    page.fill("#email", "new@example.com")
    page.fill("#password", "a-long-password")
    page.select_option("#role", "analyst")
    page.uncheck("#all_tasks")
    with page.expect_navigation():
        page.click("button:has-text('Create user')")
    assert "Nothing was created: name at least one task, or give every task" in _flash(page)
    assert _read(select(User.id).where(User.email == "new@example.com")) is None
    # The form keeps what was typed (the password aside).
    assert page.input_value("#email") == "new@example.com"
    assert page.input_value("#role") == "analyst"
    assert not page.is_checked("#all_tasks")
    page.fill("#task_scope", NAME)
    page.fill("#password", "a-long-password")
    with page.expect_navigation():
        page.click("button:has-text('Create user')")
    assert "created" in _flash(page)
    assert _read(select(User.task_scope).where(User.email == "new@example.com")) == [NAME]
    # A person limited to the task named "all" stays limited to it through a role change.
    page.click("[aria-label='Manage only-all@example.com']")
    assert page.input_value("#task_scope") == "all" and not page.is_checked("#all_tasks")
    page.select_option("#role", "analyst")
    with page.expect_navigation():
        page.click("button:has-text('Save role and tasks')")
    assert "tasks" not in _flash(page)
    assert _read(select(User.task_scope).where(User.email == "only-all@example.com")) == ["all"]
    assert errors == []


# ---------------------------------------------------------------------------- policy (11)


def test_the_policy_page_says_what_it_saved_and_refuses_an_emptied_field(page_for, live_server):
    _setup()
    page = page_for(ADMIN, PASSWORD)
    page.goto(live_server + f"/admin/tasks/{NAME}/policy")
    before = page.input_value("#audit_rate")
    page.fill("#audit_rate", "")
    with page.expect_navigation():
        page.click("text=Save policy")
    said = _flash(page)
    assert "Policy saved" not in said
    assert "Audit rate" in said and "nothing was saved" in said.lower()
    assert "Audit rate was left empty" in page.locator("#audit_rate-err").inner_text()
    assert page.get_attribute("#audit_rate", "aria-invalid") == "true"

    # Nothing changed: nothing is claimed and no event is written.
    page.goto(live_server + f"/admin/tasks/{NAME}/policy")
    with page.expect_navigation():
        page.click("text=Save policy")
    assert "Policy saved" not in _flash(page) and "No changes" in _flash(page)
    assert _events("task.changed") == []

    # A real change names the field, the old and the new value.
    page.fill("#audit_rate", "0.1")
    with page.expect_navigation():
        page.click("text=Save policy")
    said = _flash(page)
    assert "Audit rate" in said and before in said and "0.1" in said
    policy = _read(select(Task.policy).where(Task.name == NAME))
    assert policy["audit_rate"] == 0.1


# ----------------------------------------------------------------------------------- small


def test_after_a_wrong_password_the_cursor_is_in_the_password_field(browser, live_server):
    _setup()
    context = browser.new_context()
    try:
        login = context.new_page()
        login.set_default_timeout(15_000)
        login.goto(live_server + "/login")
        assert login.evaluate("document.activeElement.id") == "email"
        login.fill("#email", ANN)
        login.fill("#password", "wrong password")
        with login.expect_navigation():
            login.keyboard.press("Enter")
        assert "Wrong e-mail or password" in login.content()
        assert login.evaluate("document.activeElement.id") == "password"
        assert login.input_value("#email") == ANN
    finally:
        context.close()


def test_every_page_has_a_favicon(browser, live_server):
    _setup()
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        failed: list[str] = []
        page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
        page.goto(live_server + "/login")
        icon = page.locator("link[rel=icon]").first.get_attribute("href")
        assert icon and page.request.get(live_server + icon).status == 200
        page.goto(live_server + "/healthz")  # a JSON page: the browser asks /favicon.ico
        resp = context.request.get(live_server + "/favicon.ico")
        assert resp.status == 200 and resp.headers["content-type"].startswith("image/")
        assert failed == []
    finally:
        context.close()


def test_pages_that_do_not_exist_are_pages_in_the_browser(page_for, live_server):
    _setup()
    page = page_for(ANN, PASSWORD)
    for path in ("/tasks/nope/review", "/cases/doesnotexist", "/tasks/nope/queue"):
        resp = page.goto(live_server + path)
        assert resp.status == 404, path
        assert resp.headers["content-type"].startswith("text/html"), path
        assert page.locator("h1").inner_text() == "404", path
        assert page.locator("main a[href='/']").count() == 1
    # The API keeps answering JSON, in a browser too.
    api = page.goto(live_server + "/api/v1/cases/doesnotexist")
    assert api.status == 404 and json.loads(api.text())["error"]["code"] == "not_found"
