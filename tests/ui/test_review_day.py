"""A whole working day on the review page (issue #19), in a real headless Chromium.

Refused decisions are said and stay said; the case fits the screen (desk and phone); new
work arrives without a reload; the page says how much is left and what was saved; every
case gives one true reason, audits included, without telling them apart (docs/review.md)."""

from __future__ import annotations

import re
from datetime import timedelta
from types import SimpleNamespace
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
from tests.ui import conftest as ui

pytestmark = pytest.mark.browser
PASSWORD = "reviewer-password-1"
EMAIL = "day@example.com"
NAME = SIMPLE_TASK["name"]

#: A loan task as the issue saw it: 13 fields, the ones that matter most at the end.
LOAN_FIELDS = [
    {"name": "notes", "type": "text", "required": False},
    {"name": "applicant", "type": "category"},
    {"name": "state", "type": "category"},
    {"name": "employer", "type": "category", "required": False},
    {"name": "years_employed", "type": "number", "required": False},
    {"name": "income", "type": "number"},
    {"name": "savings", "type": "number", "required": False},
    {"name": "credit_lines", "type": "number", "required": False},
    {"name": "late_payments", "type": "number", "required": False},
    {"name": "verified", "type": "boolean", "required": False},
    {"name": "debt", "type": "number"},
    {"name": "amount", "type": "number"},
    {"name": "price", "type": "number"},
]
LOAN_INPUT = {
    "notes": "Second loan request this year; the first one was paid back early.",
    "applicant": "A. Jones",
    "state": "CA",
    "employer": "Acme Freight",
    "years_employed": 6,
    "income": 58_000,
    "savings": 4_200,
    "credit_lines": 3,
    "late_payments": 1,
    "verified": True,
    "debt": 12_345,
    "amount": 23_456,
    "price": 34_567,
}


def _setup(n_cases: int = 0, task: dict[str, Any] | None = None) -> list[str]:
    with unit_of_work() as session:
        create_task(session, TaskCreateSchema().load(task or SIMPLE_TASK), SYSTEM)
        create_user(
            session, email=EMAIL, password=PASSWORD, role="reviewer", task_scope=None, actor=SYSTEM
        )
    return queue_cases(NAME, n_cases) if n_cases else []


def _errors(page: Any) -> list[str]:
    """Console errors (CSP violations included) of a page, collected from now on."""
    errors: list[str] = []

    def console(message: Any) -> None:
        # A refused call (409) is logged by Chromium itself; the page says it in words.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    page.on("console", console)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def _case_on_screen(page: Any, previous: str | None) -> str:
    page.wait_for_function(
        "prev => { const w = document.getElementById('workspace');"
        " return !w.hidden && w.dataset.caseId && w.dataset.caseId !== prev; }",
        arg=previous,
    )
    return str(page.get_attribute("#workspace", "data-case-id"))


def _open(page: Any, live_server: str, task: str = NAME) -> None:
    page.goto(live_server + f"/tasks/{task}/review")


def _status(page: Any, text: str) -> None:
    page.wait_for_function(
        "t => document.getElementById('status').textContent.includes(t)", arg=text
    )


def _row(case_id: str) -> SimpleNamespace:
    """The case as stored now. The session is closed at once: on SQLite an open read
    transaction would hold off the live server's next write."""
    session = db_session()
    try:
        row = session.scalar(select(Case).where(Case.id == case_id))
        assert row is not None
        return SimpleNamespace(
            status=row.status,
            final_label=row.final_label,
            lease_expires_at=row.lease_expires_at,
            comments=[r.comment for r in row.reviews],
        )
    finally:
        db_session.remove()


# ------------------------------------------------------------- 1. refused decisions


def test_a_decision_refused_in_a_second_tab_is_said_and_stays(page_for, live_server):
    ids = _setup(2)
    tab_a = page_for(EMAIL, PASSWORD)
    errors = _errors(tab_a)
    _open(tab_a, live_server)
    first_id = _case_on_screen(tab_a, None)
    (second_id,) = set(ids) - {first_id}
    tab_b = tab_a.context.new_page()  # same reviewer, same cookies: a second tab
    errors_b = _errors(tab_b)
    _open(tab_b, live_server)
    assert _case_on_screen(tab_b, None) == first_id  # the lease is theirs: the same case

    tab_a.keyboard.press("1")
    assert _case_on_screen(tab_a, first_id) == second_id
    tab_b.keyboard.press("2")
    # The refusal names the case and stays on screen once the next case has loaded.
    assert _case_on_screen(tab_b, first_id) == second_id
    _status(tab_b, "Not saved")
    status = tab_b.inner_text("#status")
    assert first_id[-8:] in status and "already decided" in status
    assert "status-error" in (tab_b.get_attribute("#status", "class") or "")
    assert _row(first_id).final_label == "good"
    # ... until the reviewer's next action.
    tab_b.keyboard.press("2")
    page_done = "#done:not([hidden])"
    tab_b.wait_for_selector(page_done)
    assert "Not saved" not in tab_b.inner_text("#status")
    assert _row(second_id).final_label == "bad"
    assert errors == [] and errors_b == []


def test_a_session_that_ended_is_said_with_the_way_back_in(page_for, live_server):
    """Signed out elsewhere, password reset or deactivated while the page is open: the next
    decision says the person is signed out and links to the sign-in (it said "missing bearer
    token", the API's wording for a call without credentials)."""
    from service.models import User
    from service.services.accounts import end_sessions

    (case_id,) = _setup(1)
    page = page_for(EMAIL, PASSWORD)
    _open(page, live_server)
    assert _case_on_screen(page, None) == case_id
    with unit_of_work() as session:
        user = session.scalar(select(User).where(User.email == EMAIL))
        assert user is not None
        end_sessions(user)
    page.keyboard.press("1")
    note = page.wait_for_selector("#signed-out")
    assert "You are signed out" in note.inner_text()
    link = page.get_attribute("#signed-out a", "href") or ""
    assert link.startswith("/login?next=") and f"tasks%2F{NAME}%2Freview" in link
    assert "signed out" in page.inner_text("#status")
    assert "bearer" not in page.inner_text("body").lower()
    assert _row(case_id).final_label is None  # nothing was saved


def test_a_hold_an_admin_ended_is_not_called_expired(page_for, live_server):
    """An admin gave the reviewer's case back to the queue: the refusal says the hold
    ended, and why it may have, rather than claiming it expired."""
    from service.services.review import release_cases

    ids = _setup(2)
    page = page_for(EMAIL, PASSWORD)
    _open(page, live_server)
    held = _case_on_screen(page, None)
    with unit_of_work() as session:
        release_cases(session, NAME, [held], SYSTEM)
    page.keyboard.press("1")
    _status(page, "Not saved")
    status = page.inner_text("#status")
    assert held[-8:] in status and "ended" in status and "an admin" in status
    assert "expired" not in status
    assert _row(held).final_label is None and set(ids) >= {held}


@pytest.mark.parametrize(
    ("key", "change", "says"),
    [
        ("1", {"task_scope": ["other-task"]}, "Not saved: you may no longer review this task."),
        ("s", {"role": "analyst"}, "You may no longer review this task."),
        ("u", {"task_scope": ["other-task"]}, "Not undone: you may no longer review this task"),
    ],
    ids=["decide-after-scope", "skip-after-role", "undo-after-scope"],
)
def test_a_reviewer_whose_access_narrowed_is_told_and_keeps_no_case(
    page_for, live_server, key, change, says
):
    """An admin took the task (or the reviewing role) away while the page showed a case:
    the next key says, in words that fit it, that the reviewer may no longer review the
    task; the page hides the case and points back to the tasks; nothing is saved (an undo
    leaves the decision standing), and the case on screen went back to the queue
    (docs/review.md, "Leases"). A skip used to say "Skipped" while the server refused it."""
    from service.models import User
    from service.services.accounts import change_access

    _setup(3)
    with unit_of_work() as session:
        create_task(session, TaskCreateSchema().load(dict(SIMPLE_TASK, name="other-task")), SYSTEM)
    page = page_for(EMAIL, PASSWORD)
    errors = _errors(page)
    _open(page, live_server)
    held = _case_on_screen(page, None)
    decided = None
    if key == "u":  # a decision of the reviewer's own, to undo after the change
        page.keyboard.press("1")
        decided, held = held, _case_on_screen(page, held)
    with unit_of_work() as session:
        person = session.scalar(select(User).where(User.email == EMAIL))
        change_access(session, person, SYSTEM, **change)
    page.keyboard.press(key)
    page.wait_for_selector("#no-access", state="visible")
    status = page.inner_text("#status")
    assert status.startswith(says), status
    assert "Skipped" not in status
    if decided is not None:
        assert decided[-8:] in status and "stands" in status, status
        assert _row(decided).final_label == SIMPLE_TASK["labels"][0]
    assert page.is_hidden("#workspace") and page.is_hidden("#done")
    assert page.is_hidden("#key-hints") and page.inner_text("#progress") == ""
    assert page.is_visible("#no-access-held")  # a case was on screen: it went back
    assert page.get_attribute("#no-access a", "href") == "/"
    assert page.evaluate("document.activeElement.textContent") == "Back to tasks"
    row = _row(held)
    assert (row.status, row.final_label) == ("pending", None)
    session = db_session()
    try:
        assert session.get(Case, held).queue_state == "waiting"
    finally:
        db_session.remove()
    page.keyboard.press("2")  # keys do nothing more
    assert page.inner_text("#status") == status
    assert errors == []


def test_an_expired_hold_is_said_and_the_case_claimed_again(page_for, live_server):
    (case_id,) = _setup(1)
    page = page_for(EMAIL, PASSWORD)
    errors = _errors(page)
    _open(page, live_server)
    assert _case_on_screen(page, None) == case_id
    with unit_of_work() as session:
        session.execute(
            update(Case)
            .where(Case.id == case_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=5))
        )
    page.fill("#comment", "kept across the refusal")
    page.locator("#comment").press("Escape")
    page.keyboard.press("2")
    _status(page, "expired")
    status = page.inner_text("#status")
    assert "Not saved" in status and "claimed again" in status and case_id[-8:] in status
    assert page.get_attribute("#workspace", "data-case-id") == case_id
    assert page.input_value("#comment") == "kept across the refusal"
    row = _row(case_id)
    assert row.status == "in_review" and row.lease_expires_at is not None
    assert row.lease_expires_at.replace(tzinfo=None) > utcnow().replace(tzinfo=None)
    # Deciding again now saves it.
    page.keyboard.press("2")
    page.wait_for_selector("#done:not([hidden])")
    row = _row(case_id)
    assert row.status == "resolved" and row.final_label == "bad"
    assert row.comments[0] == "kept across the refusal"
    assert errors == []


# ---------------------------------------------------------------- 2. fits the screen


def _loan_task(primary: list[str] | None = None) -> dict[str, Any]:
    review: dict[str, Any] = {"instructions": "Decide from the numbers."}
    if primary is not None:
        review["primary_fields"] = primary
    return {"name": NAME, "labels": ["good", "bad"], "fields": LOAN_FIELDS, "review": review}


def _queue_loan(n: int = 1) -> list[str]:
    from service.services.predict import PredictRequest, predict_batch

    with unit_of_work() as session:
        results = predict_batch(
            session, NAME, [PredictRequest(input=dict(LOAN_INPUT)) for _ in range(n)], SYSTEM
        )
    return [r["case_id"] for r in results]


def _in_view(page: Any, selector: str, height: int) -> bool:
    box = page.locator(selector).bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= height


def test_thirteen_fields_and_the_decision_fit_a_laptop_screen(page_for, live_server):
    _setup(task=_loan_task())
    _queue_loan()
    page = page_for(EMAIL, PASSWORD, width=1280, height=800)
    errors = _errors(page)
    _open(page, live_server)
    _case_on_screen(page, None)
    for field in LOAN_FIELDS:
        assert _in_view(page, f"#fields [data-field='{field['name']}']", 800), field["name"]
    for selector in ("#labels button >> nth=0", "#labels button >> nth=1", "#comment", "#skip"):
        assert _in_view(page, selector, 800), selector
    assert page.locator(".key-hints").is_visible()
    assert errors == []


def test_the_task_names_the_fields_shown_first(page_for, live_server):
    _setup(task=_loan_task(primary=["debt", "amount", "price"]))
    _queue_loan()
    page = page_for(EMAIL, PASSWORD)
    _open(page, live_server)
    _case_on_screen(page, None)
    order = page.eval_on_selector_all("#fields > div", "els => els.map(e => e.dataset.field)")
    assert order[:3] == ["debt", "amount", "price"]
    assert sorted(order) == sorted(f["name"] for f in LOAN_FIELDS)
    assert page.locator("#fields [data-field='debt'] dd").inner_text() == "12,345"


def test_a_phone_keeps_the_decision_in_reach_without_keyboard_hints(page_for, live_server):
    _setup(task=_loan_task())
    ids = _queue_loan(2)
    page = page_for(EMAIL, PASSWORD, width=390, height=844, has_touch=True, is_mobile=True)
    errors = _errors(page)
    _open(page, live_server)
    shown = _case_on_screen(page, None)
    for i in range(2):
        assert _in_view(page, f"#labels button >> nth={i}", 844)
    # Why the case is here is read first, not after scrolling past every field.
    why, fields = page.locator("#why").bounding_box(), page.locator("#fields").bounding_box()
    assert why is not None and fields is not None and why["y"] < fields["y"]
    # Touch users get no keyboard hints (the buttons still say what they do).
    assert not page.locator(".key-hints").is_visible()
    assert page.locator("#decide kbd:visible").count() == 0
    # The decision bar stays in reach after scrolling through the case.
    page.evaluate("window.scrollTo(0, document.documentElement.scrollHeight)")
    assert page.locator("#fields [data-field='price']").is_visible()
    assert _in_view(page, "#labels button >> nth=1", 844)
    page.tap("#labels button >> nth=1")
    assert _case_on_screen(page, shown) in ids
    assert _row(shown).final_label == "bad"
    _status(page, "Saved")
    assert "Undo with the Undo button" in page.inner_text("#status")  # no key to press
    assert "Press u" not in page.inner_text("#status")
    assert errors == []


# --------------------------------------------------------------- 3. new work arrives


def test_all_done_hides_the_workspace_and_new_cases_arrive_by_themselves(page_for, live_server):
    _setup(0)
    page = page_for(EMAIL, PASSWORD)
    errors = _errors(page)
    _open(page, live_server)
    page.wait_for_selector("#done:not([hidden])")
    # The empty workspace is gone, not merely marked hidden.
    assert not page.locator("#workspace").is_visible()
    assert not page.locator("#skip").is_visible()
    assert not page.locator("#labels").is_visible()
    # "Check again" answers.
    page.click("#check-again")
    _status(page, "nothing new")
    assert re.search(r"Checked at \d\d:\d\d:\d\d — nothing new", page.inner_text("#status"))
    # Four cases arrive; the page picks one up without a click or a reload.
    ids = queue_cases(NAME, 4)
    page.wait_for_function("() => !document.getElementById('workspace').hidden", timeout=30_000)
    assert page.get_attribute("#workspace", "data-case-id") in ids
    assert page.locator("#done").is_hidden()
    assert page.locator("#labels button").first.is_visible()
    assert errors == []


def test_check_again_loads_a_case_that_arrived(page_for, live_server):
    _setup(0)
    page = page_for(EMAIL, PASSWORD)
    _open(page, live_server)
    page.wait_for_selector("#done:not([hidden])")
    (case_id,) = queue_cases(NAME, 1)
    page.click("#check-again")
    assert _case_on_screen(page, None) == case_id


# ------------------------------------------------------------- 4. progress and order


def test_the_page_counts_what_is_left_and_names_the_saved_case(page_for, live_server):
    _setup(3)
    page = page_for(EMAIL, PASSWORD)
    errors = _errors(page)
    _open(page, live_server)
    first = _case_on_screen(page, None)
    page.wait_for_function(
        "() => document.getElementById('progress').textContent.includes('3 cases left')"
    )
    assert "0 done this session" in page.inner_text("#progress")
    page.keyboard.press("1")
    second = _case_on_screen(page, first)
    _status(page, "Saved")
    assert first[-8:] in page.inner_text("#status") and "good" in page.inner_text("#status")
    page.wait_for_function(
        "() => document.getElementById('progress').textContent.includes('2 cases left')"
    )
    assert "1 done this session" in page.inner_text("#progress")
    page.keyboard.press("u")
    assert _case_on_screen(page, second) == first
    page.wait_for_function(
        "() => document.getElementById('progress').textContent.includes('0 done')"
    )
    assert errors == []


def test_an_undone_decision_gives_its_comment_back(page_for, live_server):
    """Undo brings the case back to be decided again, and the comment written for it with
    it (the box came back empty: the reviewer had to type it again)."""
    _setup(2)
    page = page_for(EMAIL, PASSWORD)
    _open(page, live_server)
    case_id = _case_on_screen(page, None)
    page.keyboard.press("c")
    page.keyboard.type("looks risky")
    page.keyboard.press("Escape")
    page.keyboard.press("2")
    _case_on_screen(page, case_id)
    assert page.input_value("#comment") == ""  # the next case starts with an empty box
    page.keyboard.press("u")
    page.wait_for_function(
        "id => document.getElementById('workspace').dataset.caseId === id", arg=case_id
    )
    _status(page, "Undone")
    assert page.input_value("#comment") == "looks risky"


def test_the_comment_box_has_a_key(page_for, live_server):
    _setup(2)
    page = page_for(EMAIL, PASSWORD)
    _open(page, live_server)
    case_id = _case_on_screen(page, None)
    page.keyboard.press("c")
    assert page.evaluate("document.activeElement.id") == "comment"
    page.keyboard.type("c is for comment")
    assert page.input_value("#comment") == "c is for comment"
    page.keyboard.press("Escape")
    page.keyboard.press("2")
    _case_on_screen(page, case_id)
    assert _row(case_id).comments[0] == "c is for comment"
    page.keyboard.press("?")
    page.wait_for_selector("#help[open]")
    assert "comment" in page.inner_text("#help").lower()


def test_analyst_score_bars_keep_the_task_label_order(page_for, live_server):
    (case_id,) = _setup(1)
    with unit_of_work() as session:
        create_user(
            session,
            email="analyst@example.com",
            password=PASSWORD,
            role="analyst",
            task_scope=None,
            actor=SYSTEM,
        )
        session.execute(
            update(Case)
            .where(Case.id == case_id)
            .values(suggestion_label="bad", confidence=0.7, scores={"good": 0.3, "bad": 0.7})
        )
    page = page_for("analyst@example.com", PASSWORD)
    page.goto(live_server + f"/cases/{case_id}")
    assert page.locator(".score label").all_inner_texts() == SIMPLE_TASK["labels"]


# ------------------------------------------------------------------- 5. one true reason

#: The single sentence a reviewer reads per route reason: audited and held cases, and a
#: suggestion the task never automates, read like a low-confidence case (blind review).
NEUTRAL = "This case needs a person's decision."


def test_every_case_gives_one_true_reason_and_audits_read_like_the_rest(page_for, live_server):
    kinds = [
        "low_confidence",
        "audit_answered",
        "audit_held",
        "policy",
        "forced",
        "fallback",
        "invalid_input",
        "cold_start",
    ]
    ids = _setup(len(kinds))
    now = utcnow()
    model = {
        "suggestion_label": "good",
        "confidence": 0.6,
        "scores": {"good": 0.6, "bad": 0.4},
        "model_version": 1,
    }
    values: dict[str, dict[str, Any]] = {
        "low_confidence": {"reason": "low_confidence", **model},
        "audit_answered": audited_auto_answer(),
        "audit_held": {"reason": "audit", "audit": True, **model},
        "policy": {"reason": "policy", **model},
        "forced": {"reason": "forced", "audit": True, **model},
        "fallback": {"reason": "fallback", "audit": True, **model},
        "invalid_input": {
            "reason": "invalid_input",
            "audit": True,
            "out_of_range": ["amount"],
            **model,
        },
        "cold_start": {"reason": "cold_start", "audit": True},
    }
    with unit_of_work() as session:
        for i, (kind, case_id) in enumerate(zip(kinds, ids, strict=True)):
            session.execute(
                update(Case)
                .where(Case.id == case_id)
                .values(created_at=now - timedelta(minutes=60 - i), **values[kind])
            )
    expected = {
        "low_confidence": NEUTRAL,
        "audit_answered": NEUTRAL,
        "audit_held": NEUTRAL,
        "policy": NEUTRAL,
        "forced": "The application asked for a person to decide.",
        "fallback": "Automation was pulled back (drift or an error alarm); people decide.",
        "invalid_input": "Some values are outside what the model has seen. Fields: amount.",
        "cold_start": "No certified model yet: people decide every case for now.",
    }
    page = page_for(EMAIL, PASSWORD)
    _open(page, live_server)
    previous = None
    for kind, case_id in zip(kinds, ids, strict=True):
        assert _case_on_screen(page, previous) == case_id
        why = page.inner_text("#why")
        assert why == expected[kind], kind
        text = page.inner_text("body").lower()
        for tell in ("audit", "at random", "quality", "check the", "cannot be trusted"):
            assert tell not in text, (kind, tell)
        page.keyboard.press("1")
        previous = case_id
    page.wait_for_selector("#done:not([hidden])")
    # The reviewer's case page gives the same single reason.
    page.goto(live_server + f"/cases/{ids[1]}")
    assert page.inner_text("#why") == NEUTRAL


# ------------------------------------------------------------------- screenshots


def test_screenshots_are_written_only_when_asked(browser, tmp_path, monkeypatch):
    monkeypatch.setattr(ui, "SCREENSHOTS", tmp_path)
    page = browser.new_page()
    try:
        page.set_content("<h1>Tandem</h1>")
        monkeypatch.delenv("TANDEM_SCREENSHOTS", raising=False)
        ui.shot(page, "plain")
        assert list(tmp_path.iterdir()) == []
        monkeypatch.setenv("TANDEM_SCREENSHOTS", "1")
        ui.shot(page, "asked")
        written = tmp_path / "asked.png"
        assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert [p.name for p in tmp_path.iterdir()] == ["asked.png"]
        # Every page is still rendered and checked: a blank page fails.
        monkeypatch.delenv("TANDEM_SCREENSHOTS")
        page.set_content("")
        with pytest.raises(AssertionError):
            ui.shot(page, "blank")
    finally:
        page.close()
    assert list(tmp_path.iterdir()) == [written]
