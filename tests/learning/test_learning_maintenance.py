"""Scheduled retrain trigger and the label-free drift check."""

from __future__ import annotations

from typing import Any

import numpy as np
from sqlalchemy import insert, select

from service.models import AuditEvent, Case, Job, Task, new_id
from service.services import automation
from service.services.tasks import current_audit_rate
from tests.helpers import install_model, synthetic_rows


def _cases(
    session: Any,
    task: Task,
    confidences: list[float],
    rows: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> None:
    if rows is None:
        rows, _ = synthetic_rows(len(confidences), seed=4)
    session.execute(
        insert(Case),
        [
            {
                "id": new_id(),
                "task_id": task.id,
                "input": row,
                "route": "review",
                "reason": "low_confidence",
                "status": "pending",
                "confidence": c,
                "suggestion_label": "good",
                "model_version_id": task.active_model_id,
                **extra,
            }
            for row, c in zip(rows, confidences, strict=True)
        ],
    )
    session.flush()


def test_drift_check_freezes_and_recovers(app: Any, db: Any, task: Any) -> None:
    version = install_model(db, "loan-review", threshold=0.9)
    rng = np.random.default_rng(0)
    reference = sorted(float(x) for x in 0.5 + 0.5 * rng.random(200))
    version.profile = {**version.profile, "reference_scores": reference}
    row = db.scalar(select(Task).where(Task.name == "loan-review"))
    before_rate = current_audit_rate(row)
    # Too few scores: no verdict.
    _cases(db, row, [0.99] * 50)
    assert automation.drift_check(db, row)["checked"] is False
    # The score distribution collapses onto its top: PSI far above 0.2.
    _cases(db, row, [0.99] * 200)
    report = automation.drift_check(db, row)
    assert report["score_psi"] > 0.2 and row.widening_frozen
    assert current_audit_rate(row) == min(1.0, 2 * before_rate)
    actions = db.scalars(select(AuditEvent.action).where(AuditEvent.task_id == row.id)).all()
    assert "drift.warning" in actions
    # Traffic back to the reference distribution: the freeze lifts.
    _cases(db, row, [float(x) for x in 0.5 + 0.5 * rng.random(1000)])
    report = automation.drift_check(db, row)
    assert not report["warnings"], report["warnings"]
    assert not row.widening_frozen
    actions = db.scalars(select(AuditEvent.action).where(AuditEvent.task_id == row.id)).all()
    assert "drift.cleared" in actions


def test_retrain_check_requests_once(app: Any, db: Any, task: Any, redis_conn: Any) -> None:
    from workers import context
    from workers.jobs import maintenance

    context.set_app(app)
    row = db.scalar(select(Task).where(Task.name == "loan-review"))
    assert maintenance.retrain_check() == []  # no labels yet
    _cases(db, row, [0.7] * 30, human_label="good", status="resolved")
    db.commit()
    assert maintenance.retrain_check() == ["loan-review"]
    job = db.scalar(select(Job).where(Job.task_id == row.id))
    assert job is not None and job.state == "queued" and job.progress["reason"] == "schedule"
    assert maintenance.retrain_check() == []  # one job per task


def test_drift_check_sees_suggested_labels_turn(app: Any, db: Any, task: Any) -> None:
    """A class that turns shows in the suggested labels before it shows in the scores: the
    scores below stay where the reference is, the suggestions go from 5% to 40% "bad"."""
    version = install_model(db, "loan-review", threshold=0.9)
    rng = np.random.default_rng(1)
    reference = sorted(float(x) for x in 0.5 + 0.5 * rng.random(200))
    version.profile = {
        **version.profile,
        "reference_scores": reference,
        "reference_label_counts": {"good": 570, "bad": 30},
    }
    row = db.scalar(select(Task).where(Task.name == "loan-review"))
    steady = [float(x) for x in 0.5 + 0.5 * rng.random(400)]
    _cases(db, row, steady[:380])
    _cases(db, row, steady[380:], suggestion_label="bad")  # 5%, as in the reference
    report = automation.drift_check(db, row)
    assert report["checked"] and not report["warnings"], report["warnings"]
    turned = [float(x) for x in 0.5 + 0.5 * rng.random(300)]
    for start in range(0, 300, 10):  # 40% "bad" in every stretch of the latest 300
        _cases(db, row, turned[start : start + 4], suggestion_label="bad")
        _cases(db, row, turned[start + 4 : start + 10])
    report = automation.drift_check(db, row)
    assert any(w.startswith("suggested labels") for w in report["warnings"]), report
    assert report["score_psi"] < 0.2 and row.widening_frozen
    # the rule was proved on a mix that no longer arrives: automation is pulled back at once
    assert report["fallback"] and row.automation_state == "fallback"
    assert row.ledger_since is not None
    fallback = db.scalar(
        select(AuditEvent).where(
            AuditEvent.task_id == row.id, AuditEvent.action == "automation.fallback"
        )
    )
    assert fallback is not None and "suggested labels shifted" in fallback.details["reason"]


def _state_cases(session: Any, task: Task, states: list[str]) -> None:
    """Recent cases whose scores look like the reference (no score drift), with these
    ``state`` values."""
    rows, _ = synthetic_rows(len(states), seed=5)
    for row, state in zip(rows, states, strict=True):
        row["state"] = state
    scores = 0.5 + 0.5 * np.random.default_rng(len(states)).random(len(states))
    _cases(session, task, [float(x) for x in scores], rows=rows)


def test_an_id_like_field_brings_new_values_without_a_warning(app: Any, db: Any, task: Any):
    """A category field whose every value is new (a product id in the fine_foods replays)
    raised "100% unseen categories" on every version trained on under 1,000 cases, froze
    widening and doubled the audit rate on traffic that never changed. The training data
    itself says how often a new value comes (its share of values seen once); only a rate
    well above that warns."""
    from service.ml.profile import build_profile

    rows, labels = synthetic_rows(300, seed=1)
    for i, row in enumerate(rows):
        row["state"] = f"id-{i}"  # every training value seen once
    version = install_model(db, "loan-review", threshold=0.9, rows=rows, labels=labels)
    reference = sorted(float(x) for x in 0.5 + 0.5 * np.random.default_rng(0).random(200))
    version.profile = {**version.profile, "reference_scores": reference}
    row = db.scalar(select(Task).where(Task.name == "loan-review"))
    assert version.profile["data"]["fields"]["state"]["singleton_share"] == 1.0
    _state_cases(db, row, [f"new-{i}" for i in range(300)])
    report = automation.drift_check(db, row)
    assert report["fields"]["state"]["unseen_rate"] == 1.0
    assert report["fields"]["state"]["expected_unseen_rate"] == 1.0
    assert not any(w.startswith("state:") for w in report["warnings"]), report["warnings"]
    assert not row.widening_frozen

    # A closed set of values (CA/OR/NY/NJ, each seen often) meeting a new one still warns.
    closed_rows, _ = synthetic_rows(300, seed=2)
    version.profile = {
        **version.profile,
        "data": build_profile(closed_rows, row.fields).to_dict(),
    }
    db.flush()
    _state_cases(db, row, ["TX"] * 300)
    report = automation.drift_check(db, row)
    assert any(w.startswith("state: 100% unseen") for w in report["warnings"]), report
    assert row.widening_frozen
