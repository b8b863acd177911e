"""A case's audit events as sentences a person reads (the case page's "History"), and
one name per person on that page: the pseudonym the dashboard uses (issue #19)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.models import AuditEvent, Case
from service.services.review import WHY_ACCESS_CHANGED, WHY_DEACTIVATED

SYSTEM_NAMES = {"demo-history": "the application", "demo-seed": "setup", "system": "Tandem"}


#: Why a reviewer's case was given back without them (``case.released`` ``why``).
RELEASE_REASONS = {
    WHY_DEACTIVATED: "{who} deactivated {other}",
    WHY_ACCESS_CHANGED: "{who} changed {other}'s role or tasks",
}


@dataclass(frozen=True)
class Event:
    at: datetime
    text: str
    action: str


def _label(details: dict[str, Any], key: str = "label") -> str:
    value = details.get(key)
    return f"“{value}”" if value is not None else "a label"


def describe(event: AuditEvent, names: dict[Any, str]) -> str:
    d = event.details if isinstance(event.details, dict) else {}
    if event.actor_type == "user":
        who = names.get(event.actor, "a person")
    elif event.actor_type == "token":
        # Applications and scripts (an admin's token too): the token's name says which.
        who = f"the API token “{event.actor}”"
    else:
        who = SYSTEM_NAMES.get(event.actor, "Tandem")
    other = names.get(d.get("reviewer_id"), "a reviewer")
    action = event.action
    if action == "case.claimed":
        chosen = " (chosen from the case page)" if d.get("chosen") else ""
        return f"{who} started reviewing{chosen}"
    if action == "case.released":
        if d.get("by_admin"):
            return f"{who} released the case from {other}; it is back in the queue"
        if d.get("why") in RELEASE_REASONS:
            # Given back for the reviewer, by whoever changed their account.
            changed = RELEASE_REASONS[d["why"]].format(who=who, other=other)
            return f"{changed}; the case is back in the queue"
        return f"{who} put the case back in the queue"
    if action == "case.lease_expired":
        return f"{other}'s review time ran out; the case is back in the queue"
    if action == "case.reviewed":
        return f"{who} decided {_label(d)}"
    if action == "case.resolved":
        return f"Resolved as {_label(d)}"
    if action == "case.outcome":
        return f"The application reported the outcome {_label(d)}"
    if action == "case.corrected":
        return f"{who} corrected the label to {_label(d)}"
    if action == "case.review_undone":
        return f"{who} undid their decision"
    if action == "case.repaired":
        fields = ", ".join(d.get("changed") or []) or "its input"
        return f"{who} repaired {fields}"
    return f"{action.replace('case.', '').replace('_', ' ').capitalize()} by {who}"


def timeline(case: Case, events: list[AuditEvent], names: dict[Any, str]) -> list[Event]:
    """Arrival first, then every event in order, each as a sentence."""
    route = "sent to people" if case.route == "review" else "answered automatically"
    out = [Event(case.created_at, f"Received from the application, {route}", "case.received")]
    out += [Event(e.created_at, describe(e, names), e.action) for e in events]
    return out
