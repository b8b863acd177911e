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
    # Why, in numbers: the walk's first region, its errors, and what would pass.
    first = out.record["groups"]["*"]["steps"][0]
    missed = out.record["groups"]["*"]["shortfall"]
    assert (missed["n"], missed["errors"]) == (first["n"], first["errors"])
    why = out.record["why_not"]
    assert f"had {first['errors']} wrong of {first['n']} audited" in why
    event = db.scalars(
        select(AuditEvent).where(AuditEvent.action == "model.certification_failed")
    ).one()
    assert event.details["why_not"] == why
    # The dashboard's sentence says it once that version is the one running.
    task.active_model_id, task.active_model = v.id, v
    automation.explain_failed_attempt(task, v)
    assert task.automation_reason == f"v{v.version} only suggests: not certified: {why}"


def test_a_region_under_target_says_how_many_audits_would_pass(
    app: Any, db: Any, client: Any, tokens: Any
) -> None:
    task = make_task(client, tokens["admin"])
    labelled_cases(db, task, 2000)
    v = version(db, task)
    ev = evidence(300, 0.0)
    order = np.argsort(-ev.ledger_scores)
    for i in order[:150:50]:  # 2 errors among the top ~75 scores: ~3% < 5%, too few cases
        ev.ledger_true[i] = "bad"
    out = automation.certify_version(db, task, v, ev)
    assert out.attempted and not out.certified
    missed = out.record["groups"]["*"]["shortfall"]
    assert 0 < missed["errors"] / missed["n"] < 0.05
    assert missed["ledger_needed"] > out.record["ledger_cases"]
    assert f"about {missed['ledger_needed']:,} audited cases in all" in out.record["why_not"]


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
    tested = out.record["ledger_cases"]
    assert out.record["groups"]["*"]["ledger_cases"] == ev.ledger_pred[:tested].count("good")
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


def oof_sample(n: int, error_rate: float, seed: int = 1) -> dict[str, list[Any]]:
    """An out-of-fold sample as the training job stores it (scores like ``evidence``'s)."""
    rng = np.random.default_rng(seed)
    s = 0.5 + 0.5 * rng.random(n)
    return {
        "score": [float(x) for x in s],
        "suggested": ["good"] * n,
        "correct": [bool(x) for x in rng.random(n) >= error_rate],
    }


def test_an_attempt_that_cannot_pass_is_not_made_and_spends_nothing(
    app: Any, db: Any, client: Any, tokens: Any
) -> None:
    """Readiness (docs/policy.md): a candidate whose out-of-fold error is at the target is not
    tested; no δ index is used, the reason is stored and audited, and the next candidate at
    the same ledger size gets the first slice δ/2."""
    task = make_task(client, tokens["admin"])  # α = 5%
    labelled_cases(db, task, 2000)
    v1 = version(db, task, 1)
    ev = evidence(600, 0.002)
    ev.oof = oof_sample(800, 0.06)
    out = automation.certify_version(db, task, v1, ev)
    assert not out.attempted and out.reason.startswith("not attempted: the best region")
    assert "would be needed" in out.reason or "a better model is needed" in out.reason
    assert automation.last_checkpoint(db, task) is None  # no δ spent
    assert v1.certification["readiness"]["ready"] is False
    assert v1.threshold is None
    deferred = db.scalars(
        select(AuditEvent).where(AuditEvent.action == "model.certification_deferred")
    ).all()
    assert len(deferred) == 1 and deferred[0].details["readiness"]["*"]["ready"] is False
    # the dashboard's sentence says why
    automation.promote(db, task, v1, SYSTEM, v1.certification, reason="suggestions only")
    assert "not certified yet, not attempted: the best region" in (task.automation_reason or "")
    # a better candidate, same ledger: attempted with the first slice
    v2 = version(db, task, 2)
    ev.oof = oof_sample(800, 0.0)
    out2 = automation.certify_version(db, task, v2, ev)
    assert out2.attempted and out2.certified
    assert out2.record["checkpoint"]["index"] == 1
    assert out2.record["checkpoint"]["delta"] == pytest.approx(0.025)
    assert "readiness" not in v2.certification  # an attempt replaces any deferral
    readiness = out2.record["groups"]["*"]["readiness"]
    assert readiness["ready"] and readiness["pass_probability"] >= 0.7
    # the walk started where readiness said, not at the strictest testable point
    first_tested = out2.record["groups"]["*"]["steps"][0]["threshold"]
    assert first_tested == pytest.approx(readiness["start_threshold"])


def test_a_failed_attempt_still_spends_its_slice(
    app: Any, db: Any, client: Any, tokens: Any
) -> None:
    """Readiness judges from out-of-fold predictions; when the ledger disagrees the attempt
    fails and its δ is spent like any other: the next one gets δ/4."""
    task = make_task(client, tokens["admin"])
    labelled_cases(db, task, 2000)
    v1 = version(db, task, 1)
    ev = evidence(600, 0.3)  # the ledger is far worse than the out-of-fold sample says
    ev.oof = oof_sample(800, 0.0)
    out = automation.certify_version(db, task, v1, ev)
    assert out.attempted and not out.certified
    v2 = version(db, task, 2)
    ev2 = evidence(800, 0.002, seed=4)
    ev2.oof = oof_sample(800, 0.0)
    out2 = automation.certify_version(db, task, v2, ev2)
    assert out2.attempted and out2.record["checkpoint"]["index"] == 2
    assert out2.record["checkpoint"]["delta"] == pytest.approx(0.0125)


def test_the_decision_to_attempt_never_reads_a_ledger_label(
    app: Any, db: Any, client: Any, tokens: Any
) -> None:
    """Same scores and out-of-fold sample, ledger labels all right or all wrong: the same
    verdict, the same reason, nothing spent either way (docs/policy.md, "Readiness")."""
    task = make_task(client, tokens["admin"])
    labelled_cases(db, task, 2000)
    verdicts = []
    for number, truth in ((1, "good"), (2, "bad")):
        v = version(db, task, number)
        ev = evidence(600, 0.002)
        ev.ledger_true = [truth] * 600
        ev.oof = oof_sample(800, 0.06)
        out = automation.certify_version(db, task, v, ev)
        assert not out.attempted
        verdicts.append((out.reason, out.record["readiness"]))
    assert verdicts[0] == verdicts[1]
    assert automation.last_checkpoint(db, task) is None


def test_with_no_estimate_in_any_group_every_due_size_is_attempted(
    app: Any, db: Any, client: Any, tokens: Any
) -> None:
    """A version whose training cases never went to a person unconditionally has no
    out-of-fold sample: it is tested as before readiness existed, not held back forever."""
    task = make_task(client, tokens["admin"])
    labelled_cases(db, task, 2000)
    v = version(db, task)
    ev = evidence(600, 0.002)
    ev.oof = {"score": [], "suggested": [], "correct": []}
    out = automation.certify_version(db, task, v, ev)
    assert out.attempted and out.certified
    assert out.record["groups"]["*"]["readiness"]["estimated"] is False
