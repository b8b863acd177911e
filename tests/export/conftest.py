"""Seeded feedback for the export tests: every kind of case an analyst meets (auto, reviewed,
audited, pending without a model, resolved by the application, an outcome reported after a
reviewer decided, retracted reviews, awkward text, missing optional inputs), inserted with
known values so tests can check each cell. Automatic answers carry the audit rate in force
as their inclusion probability, as predict stores it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from service.models import Case, Review, Task

T0 = datetime(2024, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
EXPORT_DOC = Path(__file__).resolve().parents[2] / "docs" / "export.md"


def doc_example(name: str) -> str:
    """The code block of docs/export.md marked ``<!-- example: name -->``: tests run the
    documented code itself, so the documentation cannot drift from what works."""
    found = re.findall(
        rf"<!-- example: {re.escape(name)} -->\n```[a-z]*\n(.*?)\n```",
        EXPORT_DOC.read_text(encoding="utf-8"),
        flags=re.S,
    )
    assert len(found) == 1, f"docs/export.md has {len(found)} examples named {name!r}"
    return str(found[0])


@pytest.fixture
def worker_app(flask_app: Any) -> Any:
    from workers.context import set_app

    set_app(flask_app)
    return flask_app


def run_worker(redis_conn: Any) -> None:
    """Run every queued export job now (RQ SimpleWorker in burst mode, real Redis)."""
    from rq import SimpleWorker

    from service.queues import SERIALIZER, rq_queue

    SimpleWorker([rq_queue("exports", redis_conn)], connection=redis_conn,
                 serializer=SERIALIZER).work(burst=True)  # fmt: skip


@dataclass
class Seed:
    task: Any
    users: dict[str, Any]
    cases: list[Any]
    passwords: dict[str, str]


def _case(task: Task, n: int, **values: Any) -> Case:
    created = T0 + timedelta(hours=n)
    base: dict[str, Any] = {
        "id": f"{n:032x}",
        "task_id": task.id,
        "external_id": f"ext-{n}",
        "input": {"review": f"text {n}", "state": "CA", "amount": 100.0 + n, "verified": True},
        "suggestion_label": "good",
        "confidence": 0.9,
        "scores": {"good": 0.9, "bad": 0.1},
        "model_version": 1,
        "route": "review",
        "reason": "low_confidence",
        "audit": False,
        "status": "pending",
        "created_at": created,
        "updated_at": created,
    }
    base.update(values)
    return Case(**base)


@pytest.fixture
def seed(app: Any, task: dict[str, Any]) -> Seed:
    from service.services.accounts import create_user
    from service.services.audit import SYSTEM
    from service.uow import unit_of_work

    with unit_of_work() as session:
        row = session.query(Task).filter_by(name=task["name"]).one()
        passwords = {"alice": "alice-password-1", "bob": "bob-password-22"}
        users = {
            name: create_user(
                session,
                email=f"{name}@example.org",
                password=pw,
                role="reviewer",
                task_scope=None,
                actor=SYSTEM,
            )
            for name, pw in passwords.items()
        }
        session.flush()
        a, b = users["alice"].id, users["bob"].id
        h = timedelta(hours=1)
        cases = [
            # 0: answered automatically by model v1
            _case(row, 0, route="auto", reason="confident", status="auto", confidence=0.97,
                  scores={"good": 0.97, "bad": 0.03}, final_label="good", label_source="model",
                  resolved_at=T0, label_probability=0.25),
            # 1: reviewed by alice, who overruled the model; the application's outcome came
            # later and disagreed with her (kept beside her label, which stays final)
            _case(row, 1, final_label="bad", label_source="reviewer", status="resolved",
                  human_label="bad", human_labelled_at=T0 + h + timedelta(minutes=5),
                  resolved_by_user_id=a, resolved_at=T0 + h + timedelta(minutes=5),
                  outcome_label="good", outcome_at=T0 + h + timedelta(days=3)),
            # 2: audited automatic answer, bob confirmed the model (label stays the model's)
            _case(row, 2, route="auto", reason="confident", status="auto", audit=True,
                  final_label="good", label_source="model", human_label="good",
                  human_labelled_at=T0 + 2 * h + timedelta(minutes=1), resolved_at=T0 + 2 * h,
                  label_probability=0.25),
            # 3: cold start, no model, optional inputs missing, no external id, still pending
            _case(row, 3, external_id=None, input={"review": "only text", "state": "NY"},
                  suggestion_label=None, confidence=None, scores=None, model_version=None,
                  reason="cold_start", queue_state="waiting"),
            # 4: the application reported the outcome before anyone reviewed (model v2): the
            # outcome is the human label, stamped at the outcome's time (as record_outcome does)
            _case(row, 4, model_version=2, suggestion_label="bad", confidence=0.6,
                  scores={"good": 0.4, "bad": 0.6}, final_label="good",
                  label_source="application", status="resolved", human_label="good",
                  human_labelled_at=T0 + 4 * h + timedelta(seconds=30),
                  outcome_label="good", outcome_at=T0 + 4 * h + timedelta(seconds=30),
                  resolved_at=T0 + 4 * h + timedelta(seconds=30)),
            # 5: alice's review was retracted; bob then decided (agreeing with the model); a
            # held audit (audit_mode hold), so drawn at the audit rate
            _case(row, 5, model_version=2, reason="audit", audit=True, label_probability=0.25,
                  final_label="good",
                  label_source="reviewer", status="resolved", human_label="good",
                  human_labelled_at=T0 + 5 * h + timedelta(minutes=9), resolved_by_user_id=b,
                  resolved_at=T0 + 5 * h + timedelta(minutes=9)),
            # 6: awkward text (comma, quotes, newline, unicode), boolean false, forced
            _case(row, 6, input={"review": 'He said "no", then\nleft. Ünïcødé ✓', "state": "",
                                 "amount": 0.1, "verified": False},
                  reason="forced", suggestion_label="bad", confidence=0.55,
                  scores={"good": 0.45, "bad": 0.55}),
        ]  # fmt: skip
        session.add_all(cases)
        session.flush()
        session.add_all(
            [
                Review(case_id=cases[1].id, task_id=row.id, reviewer_id=a, label="bad",
                       suggested_label="good", agreed_with_model=False,
                       decided_at=T0 + h + timedelta(minutes=5), duration_ms=12_345),
                Review(case_id=cases[2].id, task_id=row.id, reviewer_id=b, label="good",
                       suggested_label="good", agreed_with_model=True,
                       decided_at=T0 + 2 * h + timedelta(minutes=1), duration_ms=4_000),
                Review(case_id=cases[5].id, task_id=row.id, reviewer_id=a, label="bad",
                       suggested_label="good", agreed_with_model=False,
                       decided_at=T0 + 5 * h + timedelta(minutes=3), duration_ms=1_500,
                       retracted_at=T0 + 5 * h + timedelta(minutes=4)),
                Review(case_id=cases[5].id, task_id=row.id, reviewer_id=b, label="good",
                       suggested_label="good", agreed_with_model=True,
                       decided_at=T0 + 5 * h + timedelta(minutes=9), duration_ms=None),
            ]
        )  # fmt: skip
    # Plain copies: a later request's rollback must not expire what the tests compare with.
    return Seed(
        task=_copy(row),
        users={k: _copy(u) for k, u in users.items()},
        cases=[_copy(c) for c in cases],
        passwords=passwords,
    )


def _copy(obj: Any) -> Any:
    return SimpleNamespace(**{c.key: getattr(obj, c.key) for c in obj.__mapper__.column_attrs})
