"""Review UI additions for analysts and admins (issue #19): the glossary and its help page,
readable times and numbers, "Review this case" and the admins' bulk release on the queue.

Registered on the review UI's blueprint (imported at the end of ``review_ui.views``); views
stay thin: they load the form, call the service and commit once.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.wrappers import Response

from review_ui.glossary import REASON_NAMES, STATE_TEXT, entries
from review_ui.views import actor, bp, roles
from service.errors import ServiceError
from service.services import review as review_service
from service.uow import unit_of_work

GLOSSARY = entries()


@bp.app_context_processor
def _glossary() -> dict[str, Any]:
    return {"glossary": GLOSSARY, "state_text": STATE_TEXT, "reason_names": REASON_NAMES}


@bp.app_template_filter("when")
def when(value: datetime | str | None) -> str:
    """A time as readable UTC text; ``localtime.js`` shows it in the reader's own zone."""
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%d %b %Y, %H:%M UTC")


@bp.app_template_filter("iso")
def iso(value: datetime | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


@bp.app_template_filter("plain")
def plain(value: Any) -> str:
    """An input value as a person writes it: 58000 not 58000.0, (empty) for nothing."""
    if value is None:
        return "(empty)"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


@bp.get("/help")
@roles("reviewer", "analyst")
def help_page() -> str:
    return render_template("help.html")


@bp.post("/cases/<string:case_id>/review")
@roles("reviewer")
def review_case(case_id: str) -> Response:
    """ "Review this case": lease this case to the signed-in reviewer and open the review
    page, which serves the case they hold."""
    try:
        with unit_of_work() as session:
            claimed = review_service.claim_case(session, case_id, actor())
            task = claimed.task.name
    except ServiceError as exc:
        flash(f"Could not open this case for review: {exc.message}.", "error")
        return redirect(url_for("review_ui.case_page", case_id=case_id))
    return redirect(url_for("review_ui.review_page", task=task))


@bp.post("/tasks/<string:task>/queue/release")
@roles("admin")
def queue_release(task: str) -> Response:
    """Admins give the chosen leased cases back to the queue (one audit event each)."""
    ids = request.form.getlist("case_id")
    try:
        with unit_of_work() as session:
            released = review_service.release_cases(session, task, ids, actor())
        flash(
            f"{len(released)} case{'' if len(released) == 1 else 's'} released to the queue.",
            "ok",
        )
    except ServiceError as exc:
        flash(f"Nothing released: {exc.message}.", "error")
    back = request.form.get("back") or ""
    target = back if back.startswith("?") else ""
    return redirect(url_for("review_ui.queue_page", task=task) + target)


def may_review(case: Any) -> bool:
    """Whether the case page offers "Review this case" to the signed-in user."""
    if current_user.role not in ("reviewer", "admin"):
        return False
    return review_service.reviewable_by(case, current_user.user.id)
