"""The review UI in a real headless Chromium (docs/review.md)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from service.db import db_session
from service.models import Case, Review, User
from service.schemas.tasks import TaskCreateSchema
from service.services.accounts import create_user
from service.services.audit import SYSTEM
from service.services.tasks import create_task
from service.uow import unit_of_work
from tests.helpers import SIMPLE_TASK
from tests.review.conftest import queue_cases
from tests.ui.conftest import shot

pytestmark = pytest.mark.browser
PASSWORD = "reviewer-password-1"
INSTRUCTIONS = (
    "## How to decide\n\n* **good**: paid back on time\n* **bad**: missed payments\n\n"
    "<script>alert('x')</script>"
)


def _setup(n_cases: int, roles: tuple[str, ...] = ("reviewer",)) -> dict[str, str]:
    definition = dict(SIMPLE_TASK, review={"instructions": INSTRUCTIONS})
    emails = {}
    with unit_of_work() as session:
        create_task(session, TaskCreateSchema().load(definition), SYSTEM)
        for i, role in enumerate(roles):
            email = f"{role}{i}@example.com"
            create_user(
                session, email=email, password=PASSWORD, role=role, task_scope=None, actor=SYSTEM
            )
            emails[f"{role}{i}"] = email
    if n_cases:
        queue_cases(SIMPLE_TASK["name"], n_cases)
    return emails


def _current_case(page: Any, previous: str | None) -> str:
    page.wait_for_function(
        "prev => { const w = document.getElementById('workspace');"
        " return !w.hidden && w.dataset.caseId && w.dataset.caseId !== prev; }",
        arg=previous,
    )
    return page.get_attribute("#workspace", "data-case-id")


def test_work_twenty_cases_with_the_keyboard(page_for, live_server):
    users = _setup(20)
    page = page_for(users["reviewer0"], PASSWORD)
    shot(page, "tasks")
    page.goto(live_server + f"/tasks/{SIMPLE_TASK['name']}/review")
    # Instructions are rendered Markdown with the script stripped.
    assert page.locator(".markdown h2").inner_text() == "How to decide"
    assert page.locator(".markdown script").count() == 0
    seen: list[tuple[str, str]] = []
    previous = None
    for i in range(20):
        case_id = _current_case(page, previous)
        if i == 0:
            shot(page, "review")
            page.keyboard.press("?")
            page.wait_for_selector("#help[open]")
            shot(page, "review-help")
            page.keyboard.press("Escape")
        key = "1" if i % 2 == 0 else "2"
        page.keyboard.press(key)
        seen.append((case_id, "good" if key == "1" else "bad"))
        previous = case_id
    page.wait_for_selector("#done:not([hidden])")
    assert page.locator("#done h2").inner_text() == "All done"
    shot(page, "review-done")

    # Undo the last decision, then decide it again with the other label.
    page.keyboard.press("u")
    undone = _current_case(page, None)
    assert undone == seen[-1][0]
    page.keyboard.press("1")
    page.wait_for_selector("#done:not([hidden])")
    seen[-1] = (seen[-1][0], "good")

    session = db_session()
    session.expire_all()
    assert len({cid for cid, _ in seen}) == 20
    rows = dict(session.execute(select(Case.id, Case.final_label)).all())
    assert rows == dict(seen)
    assert session.scalar(select(func.count()).where(Case.status != "resolved")) == 0
    assert session.scalar(select(func.count()).select_from(Review)) == 21
    assert session.scalar(select(func.count()).where(Review.retracted_at.is_not(None))) == 1


def test_second_browser_never_sees_a_leased_case(page_for, live_server):
    users = _setup(3, roles=("reviewer", "reviewer"))
    url = live_server + f"/tasks/{SIMPLE_TASK['name']}/review"
    first = page_for(users["reviewer0"], PASSWORD)
    second = page_for(users["reviewer1"], PASSWORD, width=820, height=1180)
    first.goto(url)
    a = _current_case(first, None)
    second.goto(url)
    b = _current_case(second, None)
    assert a != b
    shot(second, "review-tablet")
    # Reloading keeps each reviewer on their own case.
    second.reload()
    assert _current_case(second, None) == b
    session = db_session()
    owners = dict(session.execute(select(Case.id, Case.lease_owner_id)).all())
    emails = dict(session.execute(select(User.id, User.email)).all())
    assert emails[owners[a]] == users["reviewer0"] and emails[owners[b]] == users["reviewer1"]


def test_reviewer_cannot_open_admin_pages(page_for, live_server):
    users = _setup(0)
    page = page_for(users["reviewer0"], PASSWORD)
    for path in ("/admin/users", "/admin/tokens", f"/admin/tasks/{SIMPLE_TASK['name']}/policy"):
        resp = page.goto(live_server + path)
        assert resp.status == 403
        assert "may not open" in page.content()
    resp = page.goto(live_server + f"/tasks/{SIMPLE_TASK['name']}/dashboard")
    assert resp.status == 403


def test_form_without_csrf_token_is_refused(page_for, live_server):
    users = _setup(0, roles=("admin",))
    page = page_for(users["admin0"], PASSWORD)
    page.goto(live_server + "/admin/users")
    page.fill("#email", "mallory@example.com")
    page.fill("#password", "long-enough-pw")
    page.evaluate(
        "document.querySelectorAll('form[aria-label=\"Create a user\"] input[name=csrf_token]')"
        ".forEach(e => e.remove())"
    )
    with page.expect_navigation():
        page.click("text=Create user")
    assert "expired or was not sent by this site" in page.content()
    status = page.evaluate(
        "fetch('/api/v1/tasks/loan-review/queue/claim', {method: 'POST'}).then(r => r.status)"
    )
    assert status == 403
    session = db_session()
    assert session.scalar(select(User.id).where(User.email == "mallory@example.com")) is None


def test_screenshots_of_every_page(page_for, live_server):
    users = _setup(12, roles=("admin",))
    page = page_for(users["admin0"], PASSWORD)
    name = SIMPLE_TASK["name"]
    page.goto(live_server + f"/tasks/{name}/review")
    first = _current_case(page, None)
    page.keyboard.press("2")
    _current_case(page, first)
    page.goto(live_server + f"/tasks/{name}/queue")
    shot(page, "queue")
    page.goto(live_server + f"/cases/{first}")
    assert page.locator("#reviews-title").is_visible()
    shot(page, "case")
    page.goto(live_server + f"/tasks/{name}/dashboard")
    page.wait_for_function(
        "() => document.getElementById('dash-status').textContent !== 'Loading…'"
    )
    shot(page, "dashboard")
    page.goto(live_server + f"/tasks/{name}/export")
    shot(page, "export")
    page.goto(live_server + "/admin/users")
    shot(page, "admin-users")
    page.goto(live_server + "/admin/tokens")
    page.fill("#name", "crm-integration")
    page.select_option("#role", "app")
    with page.expect_navigation():
        page.click("text=Create token")
    assert page.input_value("#new-token").startswith("tdm_")
    shot(page, "admin-tokens")
    page.goto(live_server + f"/admin/tasks/{name}/policy")
    page.fill("#audit_rate", "2")
    # The browser refuses a value outside the schema's range before sending anything ...
    assert page.eval_on_selector("#audit_rate", "e => e.validity.rangeOverflow")
    assert page.get_attribute("#audit_rate", "max") == "0.9999"  # 1 could never learn
    # ... and a client that skips that check gets the server's error on the field.
    page.eval_on_selector("form.policy", "f => { f.noValidate = true; }")
    with page.expect_navigation():
        page.click("text=Save policy")
    assert page.locator(".field-error").count() == 1
    shot(page, "admin-policy")
    page.fill("#audit_rate", "0.1")
    with page.expect_navigation():
        page.click("text=Save policy")
    assert "Policy saved: Audit rate 0.05 → 0.1." in page.content()
    page.click("text=Sign out")
    page.wait_for_url(live_server + "/login")
    shot(page, "login")


def test_a_failed_snapshot_says_why(page_for, live_server):
    """Issue #13: a snapshot that failed showed only "failed"; the analyst sees the reason."""
    from service.models import Export, Task

    users = _setup(0, roles=("analyst",))
    with unit_of_work() as session:
        task_id = session.scalar(select(Task.id).where(Task.name == SIMPLE_TASK["name"]))
        session.add(
            Export(
                task_id=task_id,
                format="csv",
                state="failed",
                error="OperationalError: disk I/O error\n[SQL: SELECT …]",
            )
        )
    page = page_for(users["analyst0"], PASSWORD)
    page.goto(live_server + f"/tasks/{SIMPLE_TASK['name']}/export")
    reason = page.locator(".export-error")
    reason.wait_for()
    assert reason.inner_text() == "Failed: OperationalError: disk I/O error"
    assert "[SQL" in (reason.get_attribute("title") or "")
