"""Blind review in a real headless Chromium (docs/review.md, "Blind review"): an audited
automatic answer is shown exactly like a case queued for low confidence, with no model
suggestion, no confidence, no accept shortcut and nothing that says "audit"."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from service.db import db_session, utcnow
from service.models import Case
from service.schemas.tasks import TaskCreateSchema
from service.services.accounts import create_user
from service.services.audit import SYSTEM
from service.services.tasks import create_task
from service.uow import unit_of_work
from tests.helpers import SIMPLE_TASK, audited_auto_answer
from tests.review.conftest import queue_cases

pytestmark = pytest.mark.browser
PASSWORD = "reviewer-password-1"
TELLS = ("audit", "quality check", "suggest", "accept", "confiden", "threshold", "%")

#: Every element of the workspace as tag, classes and attribute names (not values): two
#: cases that look the same have the same skeleton. ``disabled`` is left out: the undo
#: button is enabled once the reviewer has decided something, whatever the case.
SKELETON = """() => Array.from(document.querySelectorAll('#workspace, #workspace *')).map(
  e => [e.tagName, e.className,
        e.getAttributeNames().filter(n => n !== 'disabled').sort().join(' '), e.hidden])"""


def _setup() -> tuple[str, str]:
    with unit_of_work() as session:
        create_task(session, TaskCreateSchema().load(SIMPLE_TASK), SYSTEM)
        create_user(
            session,
            email="blind@example.com",
            password=PASSWORD,
            role="reviewer",
            task_scope=None,
            actor=SYSTEM,
        )
    audited, plain = queue_cases(SIMPLE_TASK["name"], 2)
    now = utcnow()
    model = {"model_version": 1, "threshold": 0.9}
    with unit_of_work() as session:
        session.execute(
            update(Case)
            .where(Case.id == audited)
            .values(**audited_auto_answer(), created_at=now - timedelta(minutes=2))
        )
        session.execute(
            update(Case)
            .where(Case.id == plain)
            .values(
                reason="low_confidence",
                suggestion_label="bad",
                confidence=0.6,
                scores={"good": 0.4, "bad": 0.6},
                created_at=now - timedelta(minutes=1),
                **model,
            )
        )
    return audited, plain


def _case_on_screen(page: Any, previous: str | None) -> str:
    page.wait_for_function(
        "prev => { const w = document.getElementById('workspace');"
        " return !w.hidden && w.dataset.caseId && w.dataset.caseId !== prev; }",
        arg=previous,
    )
    return str(page.get_attribute("#workspace", "data-case-id"))


def _look(page: Any) -> dict[str, Any]:
    return {
        "skeleton": page.evaluate(SKELETON),
        "why": page.inner_text("#why"),
        "text": page.inner_text("body").lower(),
        "html": page.inner_html("#workspace").lower(),
    }


def test_an_audit_shows_no_suggestion_and_looks_like_any_case(page_for, live_server):
    audited, plain = _setup()
    page = page_for("blind@example.com", PASSWORD)
    page.goto(live_server + f"/tasks/{SIMPLE_TASK['name']}/review")
    first = _case_on_screen(page, None)
    assert first == audited  # audits get no place of their own in the order, this one is oldest
    audit_look = _look(page)
    for tell in TELLS:
        assert tell not in audit_look["text"], tell
        assert tell not in audit_look["html"], tell
    assert page.locator("#suggestion, #scores, .suggested, meter").count() == 0
    # Enter accepts nothing: the keyboard flow is the labels' number keys.
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('1–9')")
    assert _case_on_screen(page, None) == audited
    page.keyboard.press("2")
    second = _case_on_screen(page, audited)
    assert second == plain
    plain_look = _look(page)
    assert plain_look["skeleton"] == audit_look["skeleton"]
    assert plain_look["why"] == audit_look["why"]
    for tell in TELLS:
        assert tell not in plain_look["html"], tell
    page.keyboard.press("1")
    page.wait_for_selector("#done:not([hidden])")
    session = db_session()
    session.expire_all()
    labels = dict(session.execute(select(Case.id, Case.human_label)).all())
    assert labels == {audited: "bad", plain: "good"}
