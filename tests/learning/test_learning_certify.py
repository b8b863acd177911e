"""certify_version / promote on synthetic evidence (real PostgreSQL, no worker)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from service.models import AuditEvent
from service.services import automation
from service.services.audit import SYSTEM
from tests.learning.evidence import evidence, labelled_cases, make_task, version


def test_no_attempt_before_min_labels(app: Any, db: Any, client: Any, tokens: Any) -> None:
    task = make_task(client, tokens["admin"], min_labels=500)
    labelled_cases(db, task, 300)
    v = version(db, task)
    out = automation.certify_version(db, task, v, evidence(300, 0.02))
    assert not out.attempted and "min_labels" in out.reason
    assert automation.last_checkpoint(db, task) is None  # no δ spent


def test_certifies_good_ledger_once_per_checkpoint(
    app: Any, db: Any, client: Any, tokens: Any
) -> None:
    task = make_task(client, tokens["admin"])
    labelled_cases(db, task, 2000)
    v = version(db, task)
    ev = evidence(600, 0.002)
    out = automation.certify_version(db, task, v, ev)
    assert out.attempted and out.certified and out.promote
    rec = v.certification
    assert rec["threshold"] == v.threshold is not None
    assert 0 < v.coverage <= rec["allowed_coverage"] + 1e-9
    assert v.error_bound is not None and v.error_bound <= 0.05
    # every accepted step's bound is within α at its δ
    steps = rec["groups"]["*"]["steps"]
    assert all(s["upper_bound"] <= 0.05 for s in steps if s["accepted"])
    assert rec["checkpoints"] == [rec["checkpoint"]["index"]]
    assert rec["checkpoint"]["ledger_size_due"] <= 600
    # The same ledger again: no new checkpoint, nothing spent, nothing changed.
    again = automation.certify_version(db, task, v, ev)
    assert not again.attempted
    assert v.certification["checkpoints"] == rec["checkpoints"]
    actions = db.scalars(select(AuditEvent.action).where(AuditEvent.task_id == task.id)).all()
    assert actions.count("model.certified") == 1


def test_bad_ledger_is_not_certified(app: Any, db: Any, client: Any, tokens: Any) -> None:
    task = make_task(client, tokens["admin"])
    labelled_cases(db, task, 2000)
    v = version(db, task)
    out = automation.certify_version(db, task, v, evidence(600, 0.6))
    assert out.attempted and not out.certified and not out.promote
    assert v.threshold is None and v.coverage == 0.0


def test_more_errors_never_widen(app: Any, db: Any, client: Any, tokens: Any) -> None:
    task = make_task(client, tokens["admin"])
    labelled_cases(db, task, 2000)
    ev = evidence(800, 0.002, seed=3)
    worse_true = list(ev.ledger_true)
    flipped = 0
    for i in np.argsort(-ev.ledger_scores):  # add errors among the most confident cases
        if worse_true[i] == "good":
            worse_true[i] = "bad"
            flipped += 1
        if flipped == 15:
            break
    worse = automation.Evidence(
        ev.ledger_scores, ev.ledger_pred, worse_true, ev.recent_scores, ev.recent_pred
    )
    v1, v2 = version(db, task, 1), version(db, task, 2)
    good = automation.certify_version(db, task, v1, ev)
    # fresh checkpoint budget for the comparison: forget v1's checkpoint
    v1.certification = {}
    bad = automation.certify_version(db, task, v2, worse)
    assert bad.record["coverage"] <= good.record["coverage"]


def test_widening_cap_limits_coverage(app: Any, db: Any, client: Any, tokens: Any) -> None:
    task = make_task(client, tokens["admin"], max_coverage_step=0.1)
    labelled_cases(db, task, 200)  # 200 cases since the last change → one step (10%)
    v = version(db, task)
    small = automation.certify_version(db, task, v, evidence(600, 0.0))
    # 10% of a 600-case ledger is too few cases to test the capped threshold, and the first
    # grid point (25% of the ledger) exceeds the cap: nothing untested is ever deployed.
    assert small.attempted and not small.certified and small.record["threshold"] is None
    out = automation.certify_version(db, task, v, evidence(2000, 0.0))
    assert out.certified
    assert out.record["allowed_coverage"] == pytest.approx(0.1)
    assert out.record["coverage"] <= 0.1 + 1e-9
    # the deployed threshold was itself tested and accepted
    steps = out.record["groups"]["*"]["steps"]
    assert any(s["accepted"] and s["threshold"] == out.record["threshold"] for s in steps)


def test_never_automate_and_label_targets(app: Any, db: Any, client: Any, tokens: Any) -> None:
    task = make_task(client, tokens["admin"], never_automate=["bad"])
    labelled_cases(db, task, 2000)
    v = version(db, task)
    ev = evidence(600, 0.002)
    ev.ledger_pred = ["bad" if i % 2 else "good" for i in range(600)]
    ev.recent_pred = ["bad" if i % 2 else "good" for i in range(2000)]
    out = automation.certify_version(db, task, v, ev)
    assert set(out.record["groups"]) == {"*"}  # "bad" forms no group
    assert out.record["groups"]["*"]["ledger_cases"] == 300
    assert out.record["coverage"] <= 0.5 + 1e-9


def test_champion_challenger_and_promote(app: Any, db: Any, client: Any, tokens: Any) -> None:
    task = make_task(client, tokens["admin"])
    labelled_cases(db, task, 2000)
    v1 = version(db, task, 1)
    out = automation.certify_version(db, task, v1, evidence(500, 0.002))
    assert out.promote
    automation.promote(db, task, v1, SYSTEM, v1.certification)
    assert task.automation_state == "automating" and task.active_model_id == v1.id
    assert task.threshold == v1.threshold and v1.status == "active"
    # A weaker candidate at the next checkpoint (certifies less) does not replace it.
    v2 = version(db, task, 2)
    ev = evidence(800, 0.2, seed=5)
    ev.active_recent_scores = np.full(2000, 0.99)  # the champion automates everything
    ev.active_recent_pred = ["good"] * 2000
    task.threshold = 0.5
    out2 = automation.certify_version(db, task, v2, ev)
    assert out2.attempted and not out2.promote
    assert task.active_model_id == v1.id and task.automation_state == "automating"


def test_activate_rollback_reuses_stored_certification(
    app: Any, db: Any, client: Any, tokens: Any
) -> None:
    task = make_task(client, tokens["admin"])
    labelled_cases(db, task, 2000)
    v1 = version(db, task, 1)
    automation.certify_version(db, task, v1, evidence(500, 0.002))
    automation.promote(db, task, v1, SYSTEM, v1.certification)
    v2 = version(db, task, 2)  # never certified
    rev = task.revision
    automation.activate(db, task, 2, SYSTEM)
    assert task.active_model_id == v2.id and task.automation_state == "manual"
    assert task.threshold is None and v1.status == "retired" and task.revision > rev
    automation.activate(db, task, 1, SYSTEM)
    assert task.automation_state == "automating" and task.threshold == v1.threshold
    actions = db.scalars(select(AuditEvent.action).where(AuditEvent.task_id == task.id)).all()
    assert actions.count("model.activated") == 3
