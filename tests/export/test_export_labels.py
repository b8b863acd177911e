"""The label sources stay apart in an export (docs/export.md, "Which label is which"): the
reviewers' label, the application's outcome, the model's suggestion and the final label
are separate columns, recorded through the real review and outcome paths; a late outcome
changes the file; the overrides counted from the file are the ones /stats counts."""

from __future__ import annotations

import hashlib
import io
from typing import Any

import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from service.db import utcnow
from service.models import Case, Task
from service.services import review
from service.services.accounts import user_actor
from tests.helpers import audited_auto_answer, auth, good_input
from tests.review.conftest import make_user

URL = "/api/v1/tasks/loan-review/export"


def _add(db: Any, **values: Any) -> str:
    """A case as predict stores it, waiting in the queue (the only one waiting)."""
    task = db.scalar(select(Task).where(Task.name == "loan-review"))
    base: dict[str, Any] = {
        "task_id": task.id,
        "input": good_input(),
        "suggestion_label": "good",
        "confidence": 0.6,
        "scores": {"good": 0.6, "bad": 0.4},
        "model_version": 1,
        "route": "review",
        "reason": "low_confidence",
        "status": "pending",
        "queue_state": "waiting",
    }
    case = Case(**{**base, **values})
    db.add(case)
    db.commit()
    return case.id


def _decide(db: Any, case_id: str, label: str) -> str:
    """A reviewer claims the case (the only one waiting) and decides; their pseudonym."""
    user = make_user(db())
    db.commit()
    actor = user_actor(user)
    claimed = review.claim(db(), "loan-review", actor)
    assert claimed is not None and claimed.case.id == case_id
    review.submit_review(db(), case_id, label, actor)
    db.commit()
    return str(user.pseudonym)


def _outcome(client: Any, token: str, case_id: str, label: str) -> None:
    resp = client.post(
        f"/api/v1/cases/{case_id}/outcome", json={"label": label}, headers=auth(token)
    )
    assert resp.status_code == 200, resp.json


def _rows(client: Any, token: str, **params: Any) -> dict[str, dict[str, Any]]:
    resp = client.get(URL, query_string={"format": "parquet", **params}, headers=auth(token))
    assert resp.status_code == 200
    return {r["case_id"]: r for r in pq.read_table(io.BytesIO(resp.get_data())).to_pylist()}


LABEL_COLUMNS = (
    "suggestion", "status", "final_label", "label_source", "human_label", "human_label_source",
    "outcome", "overridden", "reviewer",
)  # fmt: skip


def _labels(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in LABEL_COLUMNS}


def test_a_confirmed_audit_then_a_different_outcome_keeps_both_labels(
    client, tokens, task, db
) -> None:
    """The reviewer said "good" (as the model); the application later said "bad". The row
    must not read as if the reviewer had said "bad"."""
    case_id = _add(db, **{**audited_auto_answer(), "queue_state": "waiting"})
    who = _decide(db, case_id, "good")
    _outcome(client, tokens["app"], case_id, "bad")
    row = _rows(client, tokens["analyst"])[case_id]
    assert _labels(row) == {
        "suggestion": "good",
        "status": "corrected",
        "final_label": "bad",
        "label_source": "application",
        "human_label": "good",
        "human_label_source": "reviewer",
        "outcome": "bad",
        "overridden": False,
        "reviewer": who,
    }
    # The audit found the model right, as /stats says; final_label would call it an error.
    stats = client.get("/api/v1/tasks/loan-review/stats", headers=auth(tokens["analyst"])).json
    assert stats["live_error"]["n"] == 1 and stats["live_error"]["estimate"] == 0.0
    assert row["final_label"] != row["suggestion"]


def test_an_outcome_after_a_reviewer_is_exported_and_changes_the_file(
    client, tokens, task, db
) -> None:
    case_id = _add(db)
    who = _decide(db, case_id, "bad")
    before = {
        fmt: client.get(
            URL, query_string={"format": fmt}, headers=auth(tokens["analyst"])
        ).get_data()
        for fmt in ("csv", "jsonl", "parquet")
    }
    _outcome(client, tokens["app"], case_id, "good")
    after = {
        fmt: client.get(
            URL, query_string={"format": fmt}, headers=auth(tokens["analyst"])
        ).get_data()
        for fmt in ("csv", "jsonl", "parquet")
    }
    for fmt in before:
        assert hashlib.sha256(before[fmt]).digest() != hashlib.sha256(after[fmt]).digest(), fmt
    row = _rows(client, tokens["analyst"])[case_id]
    assert _labels(row) == {
        "suggestion": "good",
        "status": "resolved",
        "final_label": "bad",  # the reviewer's resolution stands
        "label_source": "reviewer",
        "human_label": "bad",
        "human_label_source": "reviewer",
        "outcome": "good",
        "overridden": True,
        "reviewer": who,
    }


def test_an_outcome_first_on_a_case_not_drawn_for_audit_is_its_human_label(
    client, tokens, task, db
) -> None:
    case_id = _add(db)
    _outcome(client, tokens["app"], case_id, "bad")
    assert _labels(_rows(client, tokens["analyst"])[case_id]) == {
        "suggestion": "good",
        "status": "resolved",
        "final_label": "bad",
        "label_source": "application",
        "human_label": "bad",
        "human_label_source": "application",
        "outcome": "bad",
        "overridden": True,
        "reviewer": None,
    }


def test_an_outcome_first_on_an_audited_case_waits_for_the_reviewers_label(
    client, tokens, task, db
) -> None:
    case_id = _add(db, audit=True)
    _outcome(client, tokens["app"], case_id, "good")
    row = _rows(client, tokens["analyst"])[case_id]
    assert (row["human_label"], row["human_label_source"], row["overridden"]) == (None, None, None)
    assert (row["final_label"], row["outcome"]) == ("good", "good")
    who = _decide(db, case_id, "bad")
    assert _labels(_rows(client, tokens["analyst"])[case_id]) == {
        "suggestion": "good",
        "status": "resolved",
        "final_label": "good",  # the application already had its answer
        "label_source": "application",
        "human_label": "bad",  # the blind verdict, the ledger's label
        "human_label_source": "reviewer",
        "outcome": "good",
        "overridden": True,
        "reviewer": who,
    }


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_label_columns_in_text_formats(client, tokens, task, db, fmt) -> None:
    """The same separate columns in CSV and JSON Lines (header and keys)."""
    case_id = _add(db, **{**audited_auto_answer(), "queue_state": "waiting",
                          "resolved_at": utcnow()})  # fmt: skip
    _decide(db, case_id, "good")
    _outcome(client, tokens["app"], case_id, "bad")
    text = client.get(URL, query_string={"format": fmt}, headers=auth(tokens["analyst"]))
    body = text.get_data(as_text=True)
    if fmt == "csv":
        assert '"human_label","human_label_source","outcome","overridden"' in body
        assert '"good","reviewer","bad",false' in body
    else:
        assert '"human_label":"good","human_label_source":"reviewer"' in body
        assert '"outcome":"bad","overridden":false' in body
