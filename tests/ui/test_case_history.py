"""The case page's history in words (review_ui/history.py): who gave a case back, and why,
when a reviewer's account changed under them. An outside try read an admin's access change
as "the application (ops) put the case back in the queue"."""

from __future__ import annotations

from typing import Any

from review_ui.history import describe
from service.models import AuditEvent

NAMES: dict[Any, str] = {7: "r_ann", "boss@example.com": "r_boss"}


def _released(actor_type: str, actor: str, details: dict[str, Any]) -> str:
    event = AuditEvent(action="case.released", actor_type=actor_type, actor=actor, details=details)
    return describe(event, NAMES)


def test_a_release_for_an_account_change_names_both_people_and_why() -> None:
    assert (
        _released("user", "boss@example.com", {"reviewer_id": 7, "why": "access changed"})
        == "r_boss changed r_ann's role or tasks; the case is back in the queue"
    )
    assert (
        _released("user", "boss@example.com", {"reviewer_id": 7, "why": "user deactivated"})
        == "r_boss deactivated r_ann; the case is back in the queue"
    )


def test_a_token_is_named_as_a_token_not_as_the_application() -> None:
    text = _released("token", "ops", {"reviewer_id": 7, "why": "access changed"})
    assert (
        text == "the API token “ops” changed r_ann's role or tasks; the case is back in the queue"
    )
    assert _released("user", "boss@example.com", {}) == "r_boss put the case back in the queue"
