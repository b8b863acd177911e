"""Automation state changes: certification, promotion, the live watch that pulls automation
back, and the rules that keep a stored certification from outliving its evidence
(docs/policy.md).

Every change of a task's automation is made here, in the caller's transaction, together
with its audit event and webhooks, and bumps ``task.revision`` so predict processes pick it
up on their next request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, aliased

from service.db import utcnow
from service.errors import Conflict, NotFound
from service.ml.profile import DataProfile, drift_report
from service.models import Case, ModelVersion, Task
from service.policy import (
    DEFAULT_WINDOW,
    PSI_WARNING,
    REST,
    Certification,
    CertStep,
    LiveStatus,
    Policy,
    allowed_coverage,
    cap_threshold,
    certify,
    decide_promotion,
    drift_warning,
    due_attempt,
    label_groups,
    live_error_alarm,
    psi,
    shortfall,
    split_delta,
    threshold_grid,
    traffic_matches_ledger,
)
from service.policy.exchangeability import CURRENT_WINDOW, label_shift
from service.policy.monitor import DRIFT_P_VALUE, MIN_DRIFT_SAMPLE
from service.policy.readiness import Readiness, assess
from service.services import audit, webhooks
from service.services.audit import SYSTEM, Actor


def in_automatic_region() -> Any:
    """Cases the running rule answered automatically, or would have but held for their audit
    verdict (``audit_mode: hold`` routes them ``review`` with reason ``audit``)."""
    return or_(Case.route == "auto", Case.reason == "audit")


def audited_auto_errors(session: Session, task: Task, window: int = DEFAULT_WINDOW) -> list[int]:
    """0/1 errors of the latest audited automatic answers of the active model that a human
    has labelled, oldest first (the live watch's evidence). Held audits count: they are the
    same uniform sample of the automatic region, only answered later."""
    rows = session.execute(
        select(Case.suggestion_label, Case.human_label)
        .where(
            Case.task_id == task.id,
            Case.audit.is_(True),
            in_automatic_region(),
            Case.model_version_id == task.active_model_id,
            Case.human_label.is_not(None),
        )
        .order_by(Case.human_labelled_at.desc())
        .limit(window)
    ).all()
    errors = [int(r.human_label != r.suggestion_label) for r in rows]
    errors.reverse()
    return errors


def live_status(session: Session, task: Task) -> LiveStatus:
    policy = Policy.from_dict(task.policy)
    return live_error_alarm(
        audited_auto_errors(session, task),
        alpha=policy.target_error,
        delta=policy.watch_delta,
        min_answers=policy.watch_min_answers,
    )


def after_audited_label(session: Session, task: Task, *, request_id: str | None = None) -> None:
    """Run the live test after an audited automatic answer got its human label."""
    if task.automation_state != "automating":
        return
    session.flush()
    status = live_status(session, task)
    if status.alarm:
        fall_back(session, task, SYSTEM, evidence=_status_dict(status), request_id=request_id)


def _status_dict(status: LiveStatus) -> dict[str, Any]:
    return {
        "n": status.n,
        "errors": status.errors,
        "estimate": status.estimate,
        "lower": status.lower,
        "upper": status.upper,
    }


FALLBACK_REASONS = {
    "live_error": "live error shown to exceed the target",
    "label_shift": "suggested labels shifted away from the certified evidence",
}


def fall_back(
    session: Session,
    task: Task,
    actor: Actor,
    *,
    evidence: dict[str, Any],
    request_id: str | None = None,
    kind: str = "live_error",
) -> None:
    """Send every case to people at once and raise the audit rate; keep the model for
    suggestions. ``kind``: ``live_error`` (the live watch) or ``label_shift`` (the traffic's
    suggested labels no longer match the evidence the rule was certified on). Automation
    resumes only through a new certification on a ledger drawn after the alarm: every stored
    certification is revoked (an admin cannot re-activate one) and a new ledger epoch starts
    now."""
    before = {
        "state": task.automation_state,
        "threshold": task.threshold,
        "coverage": task.coverage,
    }
    now = utcnow()
    task.automation_state = "fallback"
    task.coverage = 0.0
    task.automation_changed_at = now
    task.automation_reason = f"fallback: {FALLBACK_REASONS[kind]}"
    task.ledger_since = now
    task.revision += 1
    revoked = revoke_certifications(session, task, "fallback", at=now)
    details = {
        "before": before,
        "after": {"state": "fallback"},
        "evidence": evidence,
        "reason": FALLBACK_REASONS[kind],
        "revoked_versions": revoked,
        "ledger_since": _iso(now),
    }
    audit.record(
        session,
        "automation.fallback",
        actor,
        task_id=task.id,
        details=details,
        request_id=request_id,
    )
    webhooks.emit(
        session, task, "drift.detected", {"kind": kind, **evidence}, request_id=request_id
    )
    webhooks.emit(
        session,
        task,
        "automation.changed",
        {"state": "fallback", "threshold": task.threshold, "previous": before},
        request_id=request_id,
    )


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def certification_usable(certification: dict[str, Any] | None) -> bool:
    """A stored certification may put its threshold live: it certified something and was
    not revoked since (by a fallback or a policy edit it does not satisfy)."""
    cert = certification or {}
    return cert.get("threshold") is not None and not cert.get("revoked")


def revoke_certifications(
    session: Session, task: Task, reason: str, *, at: Any = None
) -> list[int]:
    """Mark every usable certification of the task's versions revoked (kept for the record;
    never deployed again). Returns the version numbers revoked."""
    stamp = {"reason": reason, "at": _iso(at or utcnow())}
    revoked: list[int] = []
    for version in session.scalars(select(ModelVersion).where(ModelVersion.task_id == task.id)):
        if certification_usable(version.certification):
            version.certification = {**(version.certification or {}), "revoked": stamp}
            revoked.append(version.version)
    return sorted(revoked)


def _group_alphas(policy: Policy, labels: Sequence[str]) -> dict[str, float]:
    return {
        g: (policy.label_alpha(g) if g != REST else policy.certification_alpha)
        for g in label_groups(policy, labels)
    }


def edit_invalidates(
    task: Task, old: Policy, new: Policy, certification: dict[str, Any] | None = None
) -> str | None:
    """Why a policy edit voids the task's certifications, or None when they still hold.

    A certification at level δ for error α is also one for any α' ≥ α and δ' ≥ δ, so a
    loosening edit keeps it. Anything else voids it: a tighter α (or margin, or per-label
    target), a higher confidence (the δ already spent could exceed the new δ), and any change
    to ``never_automate`` or to which labels have their own target (removing labels from a
    certified group can raise the error of what remains).
    """
    if new.delta < old.delta - 1e-12:
        return f"confidence raised from {old.confidence:g} to {new.confidence:g}"
    if set(new.never_automate) != set(old.never_automate):
        return "never_automate changed"
    if set(new.label_targets) != set(old.label_targets):
        return "labels with their own target changed"
    recorded = {
        g: float(r["alpha"]) for g, r in ((certification or {}).get("groups") or {}).items()
    }
    before = recorded or _group_alphas(old, task.labels)
    after = _group_alphas(new, task.labels)
    tighter = sorted(g for g, a in after.items() if g in before and a < before[g] - 1e-12)
    if tighter:
        if tighter == [REST] and len(after) == 1:  # no label has a target of its own
            return f"target error tightened to {new.certification_alpha:g}"
        names = ", ".join("all other labels" if g == REST else g for g in tighter)
        return f"target error tightened ({names})"
    return None


def policy_changed(
    session: Session, task: Task, old: Policy, new: Policy, actor: Actor
) -> str | None:
    """Apply a policy edit to the running automation at once (in the edit's transaction).

    When the edit voids the certifications, every one is revoked and automation stops: the
    model keeps suggesting, and the next certification attempt (at the next checkpoint, at
    the new numbers) decides what may be automated again. δ indices keep counting, so the
    attempts made after the edit spend at most the new δ (docs/policy.md, "Editing the
    policy"). Returns the reason, or None when nothing had to change.
    """
    active = task.active_model.certification if task.active_model is not None else None
    reason = edit_invalidates(task, old, new, active)
    if reason is None:
        return None
    now = utcnow()
    revoked = revoke_certifications(session, task, f"policy edit: {reason}", at=now)
    if task.automation_state == "automating":
        before = _automation_snapshot(task)
        task.automation_state = "manual"
        task.threshold = None
        task.certified_error_bound = None
        task.coverage = 0.0
        task.automation_changed_at = now
        task.automation_reason = (
            f"stopped by a policy edit ({reason}); the model only suggests until a version "
            "is certified at the new numbers"
        )
        task.revision += 1
        after = _automation_snapshot(task)
        audit.record(
            session,
            "automation.changed",
            actor,
            task_id=task.id,
            details={
                "before": before,
                "after": after,
                "reason": f"policy edit: {reason}",
                "revoked_versions": revoked,
            },
        )
        webhooks.emit(
            session,
            task,
            "automation.changed",
            {**after, "previous": before, "reason": f"policy edit: {reason}"},
        )
    elif revoked:
        audit.record(
            session,
            "certification.revoked",
            actor,
            task_id=task.id,
            details={"reason": f"policy edit: {reason}", "revoked_versions": revoked},
        )
    return reason


# ------------------------------------------------------------------ certification (docs/policy.md)

#: Router threshold for a label whose group is not certified: no confidence reaches it.
NEVER = 2.0
#: Recent traffic used for the grid, coverage and the widening cap.
RECENT_CASES = 2000


@dataclass
class Evidence:
    """Scores of one version (and of the active one) on the ledger and on recent traffic.

    ``*_scores`` are top-class probabilities, ``*_pred`` the suggested labels. Computed by the
    training job outside any transaction (scoring may take seconds); certification itself only
    reads these arrays.

    The ledger is every audit-flagged case of the current ledger epoch **in arrival order**,
    labelled or not (``ledger_true`` is None where the audit label is still missing): an
    attempt tests exactly the first n_j of them and waits until all n_j are labelled, so
    slow, skipped or hard audits cannot drop out of the evidence. ``*_blocked`` marks cases
    the router never answers automatically whatever their score (forced review, input out of
    the version's training range): they are left out of the certified set as the router
    leaves them out of the automated one. Recent traffic is newest first; its first
    ``CURRENT_WINDOW`` cases are "now" for the exchangeability check of suggested labels, the
    last ``CURRENT_WINDOW`` flagged cases for that of scores (see
    :func:`service.policy.traffic_matches_ledger`).
    """

    ledger_scores: np.ndarray
    ledger_pred: list[str]
    ledger_true: Sequence[str | None]
    recent_scores: np.ndarray
    recent_pred: list[str]
    active_recent_scores: np.ndarray | None = None
    active_recent_pred: list[str] | None = None
    ledger_blocked: np.ndarray | None = None
    recent_blocked: np.ndarray | None = None
    #: the version's out-of-fold predictions on representative training cases
    #: (``score``/``suggested``/``correct`` lists, see ``learning.readiness_sample``); None for
    #: versions trained before the readiness check: every due step is then attempted.
    oof: dict[str, list[Any]] | None = None


@dataclass
class CertificationOutcome:
    attempted: bool
    certified: bool
    promote: bool
    reason: str
    record: dict[str, Any] = field(default_factory=dict)


def human_label_count(session: Session, task: Task) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Case)
            .where(Case.task_id == task.id, Case.human_label.is_not(None))
        )
        or 0
    )


def _attempts(session: Session, task: Task) -> list[dict[str, Any]]:
    """Every certification attempt ever made for the task (δ index, epoch step, epoch), read
    from the versions' records; records written before epochs existed count as the first
    epoch, where the step is the index."""
    out: list[dict[str, Any]] = []
    for cert in session.scalars(
        select(ModelVersion.certification).where(ModelVersion.task_id == task.id)
    ):
        cert = cert or {}
        entries = [cert.get("checkpoint")] + [h.get("checkpoint") for h in cert.get("history", [])]
        seen: set[int] = set()
        for entry in entries:
            if isinstance(entry, dict) and entry.get("index") is not None:
                index = int(entry["index"])
                seen.add(index)
                out.append(
                    {
                        "index": index,
                        "epoch_step": int(entry.get("epoch_step") or index),
                        "ledger_since": entry.get("ledger_since"),
                    }
                )
        for index in cert.get("checkpoints", []):
            if int(index) not in seen:
                out.append({"index": int(index), "epoch_step": int(index), "ledger_since": None})
    return out


def last_checkpoint(session: Session, task: Task) -> int | None:
    """Highest δ index any version of the task was ever certified at (each index spends its
    δ_j once, whichever version used it)."""
    return _last_used(session, task)[0]


def _last_used(session: Session, task: Task) -> tuple[int | None, int | None]:
    """(last δ index ever used, last step of the current ledger epoch), from one read."""
    attempts = _attempts(session, task)
    epoch = _iso(task.ledger_since)
    indices = [a["index"] for a in attempts]
    steps = [a["epoch_step"] for a in attempts if a["ledger_since"] == epoch]
    return (max(indices) if indices else None, max(steps) if steps else None)


def _coverage_at(
    scores: np.ndarray, pred: Sequence[str], threshold: float | None, label_thresholds: dict
) -> float:
    """Share of ``scores`` a deployed rule (τ plus per-label τ) would answer automatically."""
    if threshold is None or scores.size == 0:
        return 0.0
    taus = np.array([float(label_thresholds.get(p, threshold)) for p in pred])
    return float(np.mean(scores >= taus))


def active_coverage(task: Task, evidence: Evidence) -> float:
    """What the running rule automates on the same recent traffic (0 unless automating)."""
    if task.automation_state != "automating" or task.active_model is None:
        return 0.0
    if evidence.active_recent_scores is None or evidence.active_recent_pred is None:
        return float(task.coverage or 0.0)
    lt = (task.active_model.certification or {}).get("label_thresholds") or {}
    return _coverage_at(
        evidence.active_recent_scores, evidence.active_recent_pred, task.threshold, lt
    )


def _cases_since_change(session: Session, task: Task) -> int:
    stmt = select(func.count()).select_from(Case).where(Case.task_id == task.id)
    if task.automation_changed_at is not None:
        stmt = stmt.where(Case.created_at > task.automation_changed_at)
    return int(session.scalar(stmt) or 0)


def _step_dict(step: CertStep) -> dict[str, Any]:
    return {
        "threshold": step.threshold,
        "n": step.n,
        "errors": step.k,
        "p_value": step.p_value,
        "upper_bound": step.upper_bound,
        "coverage": step.coverage,
        "accepted": step.accepted,
    }


def _latest_audits(scores: np.ndarray, n_ledger: int) -> np.ndarray:
    """Scores on the latest audited cases: those that arrived after the ledger when there are
    enough of them (a sample overlapping the ledger hides a change), else the latest ones."""
    after = scores[n_ledger:]
    if after.size >= MIN_DRIFT_SAMPLE:
        return after[-CURRENT_WINDOW:]
    return scores[-CURRENT_WINDOW:]


def _defer(
    session: Session,
    task: Task,
    version: ModelVersion,
    reason: str,
    record: dict[str, Any],
    **details: Any,
) -> CertificationOutcome:
    """No attempt now, no δ spent: the audit event says why (``record`` holds the verdict)."""
    audit.record(
        session,
        "model.certification_deferred",
        SYSTEM,
        task_id=task.id,
        details={"version": version.version, "reason": reason, **record, **details},
    )
    return CertificationOutcome(False, False, False, reason, record)


def certify_version(
    session: Session, task: Task, version: ModelVersion, evidence: Evidence
) -> CertificationOutcome:
    """Certify ``version`` at the checkpoint due now, apply the widening cap, and decide
    champion/challenger against the running rule. Writes the attempt into
    ``version.certification`` (appending, never overwriting earlier attempts) and an audit
    event; does NOT promote (the caller does, in the same transaction).

    No attempt (and no δ spent) before ``min_labels`` human labels or when the ledger has
    not reached a new declared checkpoint. The ledger must hold only cases the version was
    not trained on: the training job guarantees it (audited cases never enter training).
    """
    policy = Policy.from_dict(task.policy)
    n_flagged = int(evidence.ledger_scores.size)
    labels_seen = human_label_count(session, task)
    if labels_seen < policy.min_labels:
        return CertificationOutcome(
            False, False, False, f"{labels_seen} human labels < min_labels {policy.min_labels}"
        )
    last_index, last_step = _last_used(session, task)
    due = due_attempt(
        n_flagged,
        alpha=policy.certification_alpha,
        delta=policy.delta,
        last_index=last_index,
        last_epoch_step=last_step,
    )
    if due is None:
        return CertificationOutcome(
            False,
            False,
            False,
            f"ledger of {n_flagged} flagged cases has reached no new checkpoint",
        )
    n_ledger = due.ledger_size
    missing = sum(1 for t in evidence.ledger_true[:n_ledger] if t is None)
    if missing:
        # The checkpoint's ledger is its first n_j flagged arrivals, all of them: certifying
        # on the labelled ones only would leave out exactly the slow (hard) audits.
        return CertificationOutcome(
            False,
            False,
            False,
            f"waiting for {missing} of the first {n_ledger} audit-flagged cases to be labelled",
        )
    ledger_scores = evidence.ledger_scores[:n_ledger]
    ledger_pred_list = list(evidence.ledger_pred[:n_ledger])
    shift = traffic_matches_ledger(
        ledger_scores,
        ledger_pred_list,
        current_scores=_latest_audits(evidence.ledger_scores, n_ledger),
        current_pred=list(evidence.recent_pred[:CURRENT_WINDOW]),
    )
    if not shift.exchangeable:
        reason = (
            "current traffic differs from the ledger (score PSI "
            f"{shift.score_psi:.3f}, suggested-label PSI {shift.label_psi:.3f}); "
            "no attempt until it matches again"
        )
        return _defer(
            session,
            task,
            version,
            reason,
            {"exchangeability": shift.as_dict()},
            checkpoint_index=due.index,
        )
    index, delta_j = due.index, due.delta
    current = active_coverage(task, evidence)
    allowed = allowed_coverage(
        current,
        _cases_since_change(session, task),
        policy,
        human_labels=labels_seen,
        frozen=task.widening_frozen,
    )
    groups = label_groups(policy, task.labels)
    deltas = split_delta(policy, task.labels, delta_j)
    targeted = [g for g in groups if g != REST]
    ledger_pred = np.asarray(ledger_pred_list, dtype=object)
    recent_pred = np.asarray(evidence.recent_pred, dtype=object)
    # What the router never automates is never in a certified set either.
    ledger_open = (
        np.ones(n_ledger, dtype=bool)
        if evidence.ledger_blocked is None
        else ~np.asarray(evidence.ledger_blocked, dtype=bool)[:n_ledger]
    )
    recent_open = (
        np.ones(recent_pred.size, dtype=bool)
        if evidence.recent_blocked is None
        else ~np.asarray(evidence.recent_blocked, dtype=bool)
    )
    oof = evidence.oof or {}
    oof_scores = np.asarray(oof.get("score", []), dtype=float)
    oof_pred = np.asarray(oof.get("suggested", []), dtype=object)
    oof_correct = np.asarray(oof.get("correct", []), dtype=bool)
    n_recent = max(int(evidence.recent_scores.size), 1)
    # 1. Plan every group from scores alone: what will be tested, and whether it can pass.
    plans: dict[str, dict[str, Any]] = {}
    for g in groups:
        if g == REST:
            blocked = set(policy.never_automate) | set(targeted)
            lmask = np.array([p not in blocked for p in ledger_pred], dtype=bool)
            rmask = np.array([p not in blocked for p in recent_pred], dtype=bool)
            omask = np.array([p not in blocked for p in oof_pred], dtype=bool)
        else:
            lmask, rmask, omask = ledger_pred == g, recent_pred == g, oof_pred == g
        alpha = policy.label_alpha(g) if g != REST else policy.certification_alpha
        share = float(rmask.sum()) / n_recent if len(groups) > 1 else 1.0
        lg = np.where(lmask & ledger_open, ledger_scores, -np.inf)
        rg = np.where(rmask & recent_open, evidence.recent_scores, -np.inf)
        ready: Readiness | None = None
        if evidence.oof is None:
            grid = threshold_grid(
                rg, lg, alpha=alpha, delta=deltas[g], max_coverage=allowed * share
            )
        else:
            # Every testable point; readiness picks where the walk starts.
            grid = threshold_grid(
                rg, lg, alpha=alpha, delta=deltas[g], max_coverage=allowed * share, start_share=0
            )
            ready = assess(
                np.where(omask, oof_scores, -np.inf) if oof_scores.size else oof_scores,
                oof_correct,
                lg,
                grid,
                rg,
                alpha=alpha,
                delta=deltas[g],
                current_coverage=current * share,
                max_coverage=allowed * share,
            )
            if ready.start_threshold is not None:
                grid = [t for t in grid if t <= ready.start_threshold]
            else:  # no estimate: the default start (a quarter of the ledger above τ)
                grid = threshold_grid(
                    rg, lg, alpha=alpha, delta=deltas[g], max_coverage=allowed * share
                )
        plans[g] = {
            "lmask": lmask,
            "alpha": alpha,
            "share": share,
            "lg": lg,
            "rg": rg,
            "grid": grid,
            "readiness": ready,
        }
    readiness = {g: p["readiness"].as_dict() for g, p in plans.items() if p["readiness"]}
    # Groups with an estimate decide; when none has one (no cross-validated sample of cases
    # that went to a person whatever their score, e.g. a history of reported outcomes only)
    # every due size is attempted from the default start, as before readiness existed.
    judged = [p["readiness"] for p in plans.values() if p["readiness"] and p["readiness"].estimated]
    if judged and not any(r.ready for r in judged):
        # No δ is spent: the step stays due, and the next version (or this one, once the
        # ledger is larger) is judged again. Only out-of-fold predictions and ledger scores
        # were read, never a ledger label (docs/policy.md, "Readiness").
        why = "; ".join(
            (f"{g}: " if len(plans) > 1 else "") + p["readiness"].reason for g, p in plans.items()
        )
        reason = f"not attempted: {why}"
        version.certification = {
            **(version.certification or {}),
            "readiness": {
                "ready": False,
                "reason": reason,
                "groups": readiness,
                "ledger_size_due": n_ledger,
                "delta": delta_j,
                "judged_at": utcnow().isoformat().replace("+00:00", "Z"),
            },
        }
        return _defer(
            session,
            task,
            version,
            reason,
            {"readiness": readiness},
            ledger_size_due=n_ledger,
            next_delta=delta_j,
        )
    # 2. The test itself: the only place ledger labels are read.
    correct = np.array(
        [p == t for p, t in zip(ledger_pred_list, evidence.ledger_true[:n_ledger], strict=True)],
        dtype=bool,
    )
    group_records: dict[str, Any] = {}
    chosen: dict[str, CertStep] = {}
    why_not: list[str] = []  # per group that certified nothing, in numbers (docs/policy.md)
    for g, plan in plans.items():
        alpha, share, lg, rg, grid = (
            plan["alpha"],
            plan["share"],
            plan["lg"],
            plan["rg"],
            plan["grid"],
        )
        cert = certify(lg, correct, grid, alpha=alpha, delta=deltas[g], coverage_scores=rg)
        step = cap_threshold(
            cert.accepted_steps,
            current_coverage=current * share,
            allowed_coverage=allowed * share,
        )
        if step is not None:
            chosen[g] = step
        group_records[g] = {
            "alpha": alpha,
            "delta": deltas[g],
            "ledger_cases": int(plan["lmask"].sum()),
            "grid_points": len(grid),
            "readiness": readiness.get(g),
            "accepted_threshold": cert.threshold,
            "accepted_bound": cert.upper_bound,
            "accepted_coverage": cert.coverage,
            "threshold": step.threshold if step else None,
            "error_bound": step.upper_bound if step else None,
            "coverage": step.coverage if step else 0.0,
            "steps": [_step_dict(s) for s in cert.steps if s.tested],
        }
        missed = shortfall(cert)
        if missed is not None:
            group_records[g]["shortfall"] = missed.as_dict()
            why_not.append((f"{g}: " if len(plans) > 1 else "") + missed.sentence())
    certified = bool(chosen)
    threshold: float | None = None
    label_thresholds: dict[str, float] = {}
    if certified:
        if REST in chosen:
            threshold = chosen[REST].threshold
        else:
            threshold = min(s.threshold for s in chosen.values())
        if len(groups) > 1 or REST not in chosen:
            for label in task.labels:
                if label in policy.never_automate:
                    continue
                g = label if label in targeted else REST
                label_thresholds[label] = chosen[g].threshold if g in chosen else NEVER
    coverage = float(sum(s.coverage for s in chosen.values()))
    bound = max((s.upper_bound for s in chosen.values()), default=None)
    cand = Certification(
        policy.certification_alpha, delta_j, n_ledger, (), threshold, bound, coverage
    )
    active_cert = None
    if task.automation_state == "automating" and task.active_model is not None:
        active_cert = Certification(
            policy.certification_alpha,
            delta_j,
            n_ledger,
            (),
            task.threshold,
            task.certified_error_bound,
            current,
        )
    decision = decide_promotion(
        active_cert, cand, active_coverage=current, candidate_coverage=coverage
    )
    reason = decision.reason
    if not certified and any(r["accepted_threshold"] is not None for r in group_records.values()):
        reason = "certified thresholds exceed the widening cap; active version stays"
    record = {
        "certified": certified,
        "threshold": threshold,
        "error_bound": bound,
        "coverage": coverage,
        "label_thresholds": label_thresholds,
        "checkpoint": {
            "index": index,
            "epoch_step": due.epoch_step,
            "ledger_since": _iso(task.ledger_since),
            "ledger_size_due": n_ledger,
            "delta": delta_j,
        },
        "ledger_cases": n_ledger,
        "flagged_cases": n_flagged,
        "exchangeability": shift.as_dict(),
        "recent_cases": int(evidence.recent_scores.size),
        "human_labels": labels_seen,
        "allowed_coverage": allowed,
        "active_coverage": current,
        "widening_frozen": bool(task.widening_frozen),
        "groups": group_records,
        "decision": {"promote": decision.promote, "reason": reason},
        "why_not": "; ".join(why_not) if not certified and why_not else None,
        "method": cand.method,
        "certified_at": utcnow().isoformat().replace("+00:00", "Z"),
    }
    previous = dict(version.certification or {})
    history = list(previous.pop("history", []))
    previous.pop("readiness", None)  # an attempt was made: the deferral no longer applies
    checkpoints = [*previous.pop("checkpoints", []), index]
    summary_keys = (
        "certified",
        "threshold",
        "error_bound",
        "coverage",
        "checkpoint",
        "ledger_cases",
        "decision",
        "why_not",
        "certified_at",
    )
    if certified or previous.get("threshold") is None:
        # A new result replaces the headline; the earlier one stays in the history.
        if previous.get("checkpoint"):
            history.append({k: previous.get(k) for k in summary_keys})
        version.certification = {**record, "checkpoints": checkpoints, "history": history}
        version.threshold = threshold
        version.error_bound = bound
        version.coverage = coverage
    else:
        # A failed re-attempt never erases the certification the version already holds
        # (rollback re-uses it); it is kept in the history.
        history.append({k: record.get(k) for k in summary_keys})
        version.certification = {**previous, "checkpoints": checkpoints, "history": history}
    audit.record(
        session,
        "model.certified" if certified else "model.certification_failed",
        SYSTEM,
        task_id=task.id,
        details={
            "version": version.version,
            "checkpoint": index,
            "delta": delta_j,
            "ledger_cases": n_ledger,
            "threshold": threshold,
            "error_bound": bound,
            "coverage": coverage,
            "allowed_coverage": allowed,
            "decision": record["decision"],
            "why_not": record["why_not"],
        },
    )
    return CertificationOutcome(True, certified, decision.promote, reason, record)


# ------------------------------------------------------------------------------- promotion


def _automation_snapshot(task: Task) -> dict[str, Any]:
    return {
        "state": task.automation_state,
        "model_version": task.active_model.version if task.active_model else None,
        "threshold": task.threshold,
        "certified_error_bound": task.certified_error_bound,
        "coverage": task.coverage or 0.0,
    }


def promote(
    session: Session,
    task: Task,
    version: ModelVersion,
    actor: Actor,
    certification: dict[str, Any] | None,
    *,
    reason: str = "certified",
    request_id: str | None = None,
) -> None:
    """Release model AND threshold together, in the caller's transaction.

    ``certification`` is the version's stored record: a usable (certified, not revoked)
    threshold turns automation on (``automating``); otherwise the model only suggests and the
    state is ``manual`` (or stays ``fallback``). The old active version is ``retired`` and
    kept for rollback.
    """
    cert = certification or {}
    before = _automation_snapshot(task)
    previous = task.active_model
    now = utcnow()
    model_changed = previous is None or previous.id != version.id
    if model_changed:
        if previous is not None and previous.status == "active":
            previous.status = "retired"
        version.status = "active"
        version.activated_at = now
        task.active_model_id = version.id
        task.active_model = version
    certified = certification_usable(cert)
    task.threshold = cert.get("threshold") if certified else None
    task.certified_error_bound = cert.get("error_bound") if certified else None
    task.coverage = float(cert.get("coverage") or 0.0) if certified else 0.0
    if certified:
        task.automation_state = "automating"
    elif task.automation_state != "fallback":
        # A fallback ends only with a certification on evidence drawn after the alarm.
        task.automation_state = "manual"
    task.revision += 1
    after = _automation_snapshot(task)
    automation_changed = {k: v for k, v in before.items() if k != "model_version"} != {
        k: v for k, v in after.items() if k != "model_version"
    }
    if automation_changed:
        task.automation_changed_at = now
    if automation_changed or model_changed:
        sentence = _promotion_reason(version, cert, certified, reason, task)
        task.automation_reason = sentence if len(sentence) <= 300 else sentence[:299] + "…"
    if model_changed:
        audit.record(
            session,
            "model.activated",
            actor,
            task_id=task.id,
            details={
                "version": version.version,
                "previous_version": previous.version if previous else None,
                "reason": reason,
            },
            request_id=request_id,
        )
        webhooks.emit(
            session,
            task,
            "model.activated",
            {
                "version": version.version,
                "previous_version": previous.version if previous else None,
                "family": version.family,
                "reason": reason,
            },
            request_id=request_id,
        )
    if automation_changed or model_changed:
        details = {"before": before, "after": after, "reason": reason}
        if cert.get("checkpoint"):
            details["checkpoint"] = cert["checkpoint"]
        audit.record(
            session,
            "automation.changed",
            actor,
            task_id=task.id,
            details=details,
            request_id=request_id,
        )
        if automation_changed:
            webhooks.emit(
                session,
                task,
                "automation.changed",
                {**after, "previous": before, "reason": reason},
                request_id=request_id,
            )
    session.flush()


def last_failed_why(cert: dict[str, Any]) -> str | None:
    """The newest attempt's reason for certifying nothing, from a version's stored record
    (a failed re-attempt lives in its history; the headline may be older)."""
    attempts = [cert, *reversed(cert.get("history") or [])]
    newest = max(
        (a for a in attempts if a.get("certified_at")),
        key=lambda a: str(a.get("certified_at")),
        default=None,
    )
    if newest is None or newest.get("certified"):
        return None
    why = newest.get("why_not")
    return str(why) if why else None


def explain_failed_attempt(task: Task, version: ModelVersion) -> None:
    """After an attempt of the ACTIVE version certified nothing while nothing is automated,
    the dashboard's sentence says why in numbers (promotion writes it for a new version)."""
    if task.active_model_id != version.id or task.automation_state == "automating":
        return
    why = last_failed_why(version.certification or {})
    if why:
        state = "still in fallback" if task.automation_state == "fallback" else "only suggests"
        sentence = f"v{version.version} {state}: not certified: {why}"
        task.automation_reason = sentence if len(sentence) <= 300 else sentence[:299] + "…"


def _promotion_reason(
    version: ModelVersion, cert: dict[str, Any], certified: bool, reason: str, task: Task
) -> str:
    """The admin's sentence for the state a promotion left (task.automation_reason)."""
    if certified:
        said = "" if reason == "certified" else f" ({reason})"
        return f"v{version.version} automates at its certified threshold{said}"
    revoked = cert.get("revoked")
    deferred = cert.get("readiness") or {}
    if revoked:
        why = f"its certification was revoked ({revoked.get('reason')})"
    elif deferred.get("reason"):
        why = f"not certified yet, {deferred['reason']}"
    elif failed := last_failed_why(cert):
        why = f"not certified: {failed}"
    else:
        why = "it is not certified"
    if task.automation_state == "fallback":
        return f"v{version.version} is active, still in fallback: {why}"
    return f"v{version.version} only suggests: {why}"


def activate(
    session: Session,
    task: Task,
    version_number: int,
    actor: Actor,
    *,
    request_id: str | None = None,
) -> ModelVersion:
    """Admin promotion or rollback to ANY trained version of the task.

    The version's stored certification goes live with it only while it is usable: certified
    on ledger cases it was not trained on, within the task's δ budget, and not revoked since —
    a fallback revokes every certification made before the alarm, and a policy edit revokes
    those the new numbers void. Otherwise the version is activated for suggestions only
    (``manual``, or still ``fallback``). A drift freeze stays as it is. Activating the active
    version is a no-op.
    """
    version = session.scalar(
        select(ModelVersion).where(
            ModelVersion.task_id == task.id, ModelVersion.version == version_number
        )
    )
    if version is None:
        raise NotFound(
            f"task {task.name!r} has no model version {version_number}",
            {"version": version_number},
        )
    if version.status in ("training", "failed") or version.artefact_sha256 is None:
        raise Conflict(
            f"model version {version_number} is {version.status} and cannot be activated",
            {"status": version.status},
        )
    if task.active_model_id == version.id:
        return version
    reason = (
        "rollback"
        if task.active_model and version.version < task.active_model.version
        else ("admin")
    )
    promote(
        session, task, version, actor, version.certification, reason=reason, request_id=request_id
    )
    return version


# ------------------------------------------------------------------------- label-free drift

DRIFT_SAMPLE = 1000
FIELD_PSI_WARNING = 0.25
MISSING_CHANGE_WARNING = 0.2
UNSEEN_WARNING = 0.2


def drift_check(session: Session, task: Task) -> dict[str, Any]:
    """Label-free early warning (docs/policy.md): PSI of recent scores against the active
    version's held-out reference scores, the suggested labels against those it made on its
    ledger (PSI > 0.1 and p < 0.001; while automating this one also falls back), plus
    per-field drift / missing / unseen rates against its training profile. A warning freezes
    widening and doubles the audit rate; recovery lifts both. Returns the report (also stored
    in the audit event when the state flips)."""
    version = task.active_model
    if version is None:
        return {"checked": False, "reason": "no active model"}
    reference = (version.profile or {}).get("reference_scores") or []
    rows = session.execute(
        select(Case.confidence, Case.input, Case.suggestion_label)
        .where(Case.task_id == task.id, Case.model_version_id == version.id)
        .order_by(Case.created_at.desc())
        .limit(DRIFT_SAMPLE)
    ).all()
    scores = [float(r.confidence) for r in rows if r.confidence is not None]
    report: dict[str, Any] = {"checked": True, "n": len(scores), "version": version.version}
    if len(scores) < MIN_DRIFT_SAMPLE or len(reference) < MIN_DRIFT_SAMPLE:
        report.update(checked=False, reason="not enough scores yet")
        return report
    score_psi = psi(reference, scores)
    report["score_psi"] = score_psi
    warnings: list[str] = []
    reference_n = (version.profile or {}).get("reference_cases")
    if drift_warning(reference, scores, threshold=PSI_WARNING, reference_n=reference_n):
        warnings.append(f"score PSI {score_psi:.3f} > {PSI_WARNING}")
    label_counts = (version.profile or {}).get("reference_label_counts")
    # The latest few hundred only: over the whole sample a turn would need hundreds more
    # cases to move the mix past the threshold (the p-value keeps the small sample honest).
    suggested = [r.suggestion_label for r in rows[:CURRENT_WINDOW] if r.suggestion_label]
    if label_counts and len(suggested) >= MIN_DRIFT_SAMPLE:
        label_psi, label_p, shifted = label_shift(label_counts, suggested)
        report["label_psi"] = label_psi
        if shifted:
            warnings.append(f"suggested labels: PSI {label_psi:.3f} (p = {label_p:.1e})")
            if task.automation_state == "automating":
                # The mix of what the rule answers is no longer the mix it was proved on:
                # pull it back now rather than wait for the live watch's window to fill
                # with wrong answers (docs/backtest.md, "A stream that turns").
                fall_back(
                    session,
                    task,
                    SYSTEM,
                    evidence={"label_psi": label_psi, "p_value": label_p, "n": len(suggested)},
                    kind="label_shift",
                )
                report["fallback"] = True
    data = (version.profile or {}).get("data")
    fields_report: dict[str, Any] = {}
    if data:
        fields_report = drift_report(DataProfile.from_dict(data), [r.input for r in rows])
        for name, entry in fields_report.items():
            if (entry.get("psi") or 0.0) > FIELD_PSI_WARNING and (
                entry.get("psi_p_value") is None or entry["psi_p_value"] < DRIFT_P_VALUE
            ):
                warnings.append(f"{name}: PSI {entry['psi']:.3f}")
            if abs(entry.get("missing_rate_change") or 0.0) > MISSING_CHANGE_WARNING:
                warnings.append(f"{name}: missing rate moved {entry['missing_rate_change']:+.2f}")
            unseen = (entry.get("unseen_rate") or 0.0) - (entry.get("expected_unseen_rate") or 0.0)
            if entry.get("unseen_is_exact") and unseen > UNSEEN_WARNING:
                warnings.append(
                    f"{name}: {entry['unseen_rate']:.0%} unseen categories (training suggests "
                    f"{entry.get('expected_unseen_rate') or 0.0:.0%})"
                )
    report["fields"] = fields_report
    report["warnings"] = warnings
    warn = bool(warnings)
    if warn and not task.widening_frozen:
        task.widening_frozen = True
        task.revision += 1
        audit.record(
            session,
            "drift.warning",
            SYSTEM,
            task_id=task.id,
            details={
                "warnings": warnings,
                "score_psi": score_psi,
                "n": len(scores),
                "effect": "widening frozen, audit rate doubled",
            },
        )
        webhooks.emit(
            session,
            task,
            "drift.detected",
            {"kind": "label_free", "warnings": warnings, "score_psi": score_psi, "n": len(scores)},
        )
    elif not warn and task.widening_frozen:
        task.widening_frozen = False
        task.revision += 1
        audit.record(
            session,
            "drift.cleared",
            SYSTEM,
            task_id=task.id,
            details={"score_psi": score_psi, "n": len(scores)},
        )
    report["frozen"] = task.widening_frozen
    return report


def drift_check_all(session: Session) -> dict[str, Any]:
    """The periodic label-free drift check of every task with an active model; a short report
    per task name."""
    reports: dict[str, Any] = {}
    for task in session.scalars(
        select(Task).where(Task.active_model_id.is_not(None)).order_by(Task.id)
    ).all():
        report = drift_check(session, task)
        reports[task.name] = {
            k: report.get(k) for k in ("checked", "n", "score_psi", "warnings", "frozen")
        }
    return reports


def versions(session: Session, task: Task) -> list[tuple[ModelVersion, int | None]]:
    """The task's model versions, newest first, each with its parent's version number."""
    parent = aliased(ModelVersion)
    rows = session.execute(
        select(ModelVersion, parent.version)
        .outerjoin(parent, parent.id == ModelVersion.parent_id)
        .where(ModelVersion.task_id == task.id)
        .order_by(ModelVersion.version.desc())
    ).all()
    return [(version, number) for version, number in rows]
