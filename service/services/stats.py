"""Numbers shown to people about one task (docs/stats.md, ``GET /tasks/{task}/stats``).

Why weighted: people only label part of the traffic (everything the model was unsure about,
plus an audit sample of its automatic answers drawn at a rate that changes over time). A plain
average over labelled cases therefore describes the review queue, not the traffic. Each
labelled case is weighted by 1 / ``label_probability`` (its probability of being labelled,
fixed at arrival), which gives Hájek estimates for ALL traffic (:func:`weighted_rate`).

Queries aggregate in the database (one GROUP BY per figure, on the existing indexes); weighted
figures group by (inclusion probability, outcome), which has few distinct values, and expand
the counts for :func:`service.policy.weighted_rate`. PostgreSQL buckets with ``date_trunc`` and
computes percentiles in SQL; SQLite (embedded mode) buckets with ``strftime`` and computes
percentiles in Python. See docs/stats.md for what every number means.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, and_, case, func, or_, select
from sqlalchemy.orm import Session

from service.db import utcnow
from service.errors import ValidationFailed
from service.ml.profile import DataProfile, drift_report
from service.models import Case, ModelVersion, Review, Task, User
from service.policy import Policy, drift_warning, psi, weighted_rate
from service.services.automation import in_automatic_region

BUCKETS = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
DEFAULT_WINDOW = timedelta(days=7)
HOURLY_UP_TO = timedelta(days=2)  # default bucket: hour for windows this short, else day
MAX_BUCKETS = 2000
DRIFT_RECENT_SCORES = 2000  # latest suggestion confidences compared with the reference
DRIFT_RECENT_INPUTS = 500  # latest inputs compared field by field with the training profile
# Keys under ``model_versions.profile`` where training may store the reference score sample
# (confidences of the new version on held-out rows at training time).
REFERENCE_SCORE_KEYS = ("reference_scores", "score_reference", "scores")
QUEUE_STATES = ("waiting", "leased")
HUMAN_SOURCES = ("reviewer", "application")


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime
    bucket: str

    @property
    def width(self) -> timedelta:
        return BUCKETS[self.bucket]


def make_window(
    since: datetime | None, until: datetime | None, bucket: str | None, *, now: datetime
) -> Window:
    """Defaults: until = now, since = until − 7 days, bucket = hour for ≤ 2 days else day."""
    until = _aware(until) if until is not None else now
    since = _aware(since) if since is not None else until - DEFAULT_WINDOW
    if since >= until:
        raise ValidationFailed("since must be before until", {"since": ["Must be before until."]})
    if bucket is None:
        bucket = "hour" if until - since <= HOURLY_UP_TO else "day"
    if bucket not in BUCKETS:
        raise ValidationFailed("unknown bucket", {"bucket": ["One of: hour, day."]})
    n = len(_bucket_starts(Window(since, until, bucket)))
    if n > MAX_BUCKETS:
        raise ValidationFailed(
            f"window has {n} {bucket} buckets; at most {MAX_BUCKETS}",
            {"bucket": [f"Too many buckets ({n} > {MAX_BUCKETS}); use a coarser bucket."]},
        )
    return Window(since, until, bucket)


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _truncate(value: datetime, bucket: str) -> datetime:
    value = value.astimezone(UTC)
    if bucket == "hour":
        return value.replace(minute=0, second=0, microsecond=0)
    return value.replace(hour=0, minute=0, second=0, microsecond=0)


def _bucket_starts(window: Window) -> list[datetime]:
    """UTC-aligned bucket starts covering [since, until); the first may start before since."""
    start = _truncate(window.since, window.bucket)
    out: list[datetime] = []
    while start < window.until:
        out.append(start)
        start += window.width
        if len(out) > MAX_BUCKETS:
            break
    return out


# --- dialect helpers -------------------------------------------------------------------


class _Sql:
    """The few expressions that differ between PostgreSQL and SQLite."""

    def __init__(self, session: Session) -> None:
        self.pg = session.get_bind().dialect.name == "postgresql"

    def bucket(self, column: Any, bucket: str) -> ColumnElement[Any]:
        if self.pg:
            return func.date_trunc(bucket, func.timezone("UTC", column))
        fmt = "%Y-%m-%d %H:00:00" if bucket == "hour" else "%Y-%m-%d 00:00:00"
        return func.strftime(fmt, column)

    def seconds_between(self, start: Any, end: Any) -> ColumnElement[Any]:
        if self.pg:
            return func.extract("epoch", end - start)
        return (func.julianday(end) - func.julianday(start)) * 86400.0

    def bucket_key(self, value: Any) -> datetime:
        """A bucket value from the database as an aware UTC datetime."""
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _flag(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return case((condition, 1), else_=0)


def _enters_queue() -> ColumnElement[bool]:
    """A case joins the review queue when routed to people or drawn for audit."""
    return or_(Case.route == "review", Case.audit == True)  # noqa: E712


def _disagrees() -> ColumnElement[int]:
    return _flag(Case.human_label != Case.suggestion_label)


# --- estimates -------------------------------------------------------------------------


def _clean(x: float | None) -> float | None:
    if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))):
        return None
    return float(x)


def weighted_from_counts(
    groups: Iterable[tuple[float, int, int]], confidence: float
) -> dict[str, Any]:
    """Hájek estimate from grouped counts ``(label_probability, value 0/1, count)``.

    Expanding the groups gives exactly the per-case arrays :func:`weighted_rate` expects.
    """
    probs: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for prob, value, count in groups:
        if count <= 0:
            continue
        p = min(max(float(prob or 1.0), 1e-9), 1.0)
        probs.append(np.full(int(count), p))
        values.append(np.full(int(count), float(value)))
    if not probs:
        return {"estimate": None, "lower": None, "upper": None, "n": 0}
    rate = weighted_rate(np.concatenate(values), np.concatenate(probs), confidence)
    return {
        "estimate": _clean(rate.estimate),
        "lower": _clean(rate.lower),
        "upper": _clean(rate.upper),
        "n": rate.n,
    }


def exact_rate(k: int, n: int, confidence: float) -> dict[str, Any]:
    """k of n with the exact (Clopper–Pearson) two-sided interval; all weights equal."""
    if n <= 0:
        return {"estimate": None, "lower": None, "upper": None}
    out = weighted_from_counts([(1.0, 1, k), (1.0, 0, n - k)], confidence)
    return {"estimate": out["estimate"], "lower": out["lower"], "upper": out["upper"]}


def _percentile(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(values, dtype=float), q * 100)) if values else None


# --- the report ------------------------------------------------------------------------


def task_stats(
    session: Session,
    task: Task,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    bucket: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The dashboard's whole payload for one task and window (contract in docs/stats.md)."""
    now = now or utcnow()
    window = make_window(since, until, bucket, now=now)
    sql = _Sql(session)
    policy = Policy.from_dict(task.policy)
    conf = policy.confidence
    in_window = and_(
        Case.task_id == task.id, Case.created_at >= window.since, Case.created_at < window.until
    )

    # Traffic per bucket: cases, automatic answers, laxest threshold, queue entries.
    b_created = sql.bucket(Case.created_at, window.bucket).label("b")
    traffic = session.execute(
        select(
            b_created,
            func.count(),
            func.sum(_flag(Case.route == "auto")),
            func.min(Case.threshold),
            func.sum(_flag(_enters_queue())),
        )
        .where(in_window)
        .group_by(b_created)
    ).all()

    # Live error of automatic answers: audited, human-labelled, weighted.
    live_rows = session.execute(
        select(b_created, Case.label_probability, _disagrees().label("v"), func.count())
        .where(
            in_window,
            Case.audit == True,  # noqa: E712 (plain equality matches the ledger index)
            in_automatic_region(),
            Case.human_label.is_not(None),
            Case.suggestion_label.is_not(None),
        )
        .group_by(b_created, Case.label_probability, "v")
    ).all()

    # Override rate: every case labelled by design (routed to people, or drawn for audit).
    override_rows = session.execute(
        select(Case.label_probability, _disagrees().label("v"), func.count())
        .where(
            in_window,
            _enters_queue(),
            Case.human_label.is_not(None),
            Case.suggestion_label.is_not(None),
        )
        .group_by(Case.label_probability, "v")
    ).all()

    labelled_series, decisions = _labelled_and_decisions(session, sql, task, window)
    depth_now, oldest = _queue_now(session, task, now)
    totals = [0, 0]
    by_bucket: dict[datetime, dict[str, Any]] = {}
    entries: dict[datetime, int] = {}
    for b, n, auto, threshold, entered in traffic:
        key = sql.bucket_key(b)
        by_bucket[key] = {"cases": int(n), "auto": int(auto or 0), "threshold": threshold}
        entries[key] = int(entered or 0)
        totals[0] += int(n)
        totals[1] += int(auto or 0)
    depths = _queue_depth_series(session, sql, task, window, depth_now, entries)
    live_by_bucket: dict[datetime, list[tuple[float, int, int]]] = defaultdict(list)
    live_all: list[tuple[float, int, int]] = []
    for b, prob, v, n in live_rows:
        live_by_bucket[sql.bucket_key(b)].append((prob, int(v), int(n)))
        live_all.append((prob, int(v), int(n)))

    series = []
    for start in _bucket_starts(window):
        row = by_bucket.get(start, {"cases": 0, "auto": 0, "threshold": None})
        live = weighted_from_counts(live_by_bucket.get(start, []), conf)
        lab = labelled_series.get(start, (0, None))
        series.append(
            {
                "bucket": start,
                "cases": row["cases"],
                "auto": row["auto"],
                "automation_rate": row["auto"] / row["cases"] if row["cases"] else None,
                "threshold": row["threshold"],
                "live_error": live["estimate"],
                "live_error_lower": live["lower"],
                "live_error_upper": live["upper"],
                "queue_depth": depths.get(start, depth_now),
                "labelled": lab[0],
                "median_decision_seconds": lab[1],
            }
        )

    live_error = weighted_from_counts(live_all, conf)
    live_error["target"] = policy.target_error
    active = task.active_model
    return {
        "task": task.name,
        "window": {"since": window.since, "until": window.until, "bucket": window.bucket},
        "automation": {
            "state": task.automation_state,
            "threshold": task.threshold,
            "model_version": active.version if active is not None else None,
            "coverage": task.coverage,
            "rate": exact_rate(totals[1], totals[0], conf),
        },
        "live_error": live_error,
        "override_rate": weighted_from_counts(
            [(p, int(v), int(n)) for p, v, n in override_rows], conf
        ),
        "time_to_decision": decisions,
        "queue": {"depth": depth_now, "oldest_pending_seconds": oldest},
        "reviewers": reviewer_stats(session, task, window),
        "audit_agreement": audit_agreement(session, task, window, conf),
        "series": series,
        "drift": drift_status(session, task, window),
    }


def task_health(session: Session, task: Task, *, now: datetime | None = None) -> dict[str, Any]:
    """What the task list and the dashboard flag (issue #19): the automation state, and the
    live error of automatic answers over the default window (the dashboard's) against the
    task's target α. ``above_target`` is the point estimate above α: the promise is at risk
    before the live watch's confidence bound falls back (docs/stats.md)."""
    now = now or utcnow()
    policy = Policy.from_dict(task.policy)
    rows = session.execute(
        select(Case.label_probability, _disagrees().label("v"), func.count())
        .where(
            Case.task_id == task.id,
            Case.created_at >= now - DEFAULT_WINDOW,
            Case.created_at < now,
            Case.audit == True,  # noqa: E712 (plain equality matches the ledger index)
            in_automatic_region(),
            Case.human_label.is_not(None),
            Case.suggestion_label.is_not(None),
        )
        .group_by(Case.label_probability, "v")
    ).all()
    live = weighted_from_counts([(p, int(v), int(n)) for p, v, n in rows], policy.confidence)
    estimate = live["estimate"]
    return {
        "state": task.automation_state,
        "fallback": task.automation_state == "fallback",
        "live_error": estimate,
        "live_error_n": live["n"],
        "target": policy.target_error,
        "above_target": estimate is not None and estimate > policy.target_error,
    }


def _decision_filter() -> ColumnElement[bool]:
    """A decision people made on a case routed to them (not an audit of an automatic one)."""
    return and_(
        Case.route == "review",
        Case.label_source.in_(HUMAN_SOURCES),
        Case.resolved_at.is_not(None),
    )


def _labelled_and_decisions(
    session: Session, sql: _Sql, task: Task, window: Window
) -> tuple[dict[datetime, tuple[int, float | None]], dict[str, float | None]]:
    """Human labels per bucket (by when the verdict arrived) and time to decision."""
    where = and_(
        Case.task_id == task.id,
        Case.human_labelled_at >= window.since,
        Case.human_labelled_at < window.until,
    )
    b_lab = sql.bucket(Case.human_labelled_at, window.bucket).label("b")
    seconds = sql.seconds_between(Case.created_at, Case.resolved_at)
    decision_seconds = case((_decision_filter(), seconds), else_=None)
    if sql.pg:
        rows = session.execute(
            select(
                b_lab,
                func.count(),
                func.percentile_cont(0.5).within_group(decision_seconds),
            )
            .where(where)
            .group_by(b_lab)
        ).all()
        per_bucket = {sql.bucket_key(b): (int(n), _clean(med)) for b, n, med in rows}
        med, p90 = session.execute(
            select(
                func.percentile_cont(0.5).within_group(seconds),
                func.percentile_cont(0.9).within_group(seconds),
            ).where(where, _decision_filter())
        ).one()
        return per_bucket, {"median_seconds": _clean(med), "p90_seconds": _clean(p90)}
    counts: dict[datetime, int] = defaultdict(int)
    durations: dict[datetime, list[float]] = defaultdict(list)
    for b, sec in session.execute(select(b_lab, decision_seconds).where(where)):
        key = sql.bucket_key(b)
        counts[key] += 1
        if sec is not None:
            durations[key].append(float(sec))
    per_bucket = {k: (n, _percentile(durations.get(k, []), 0.5)) for k, n in counts.items()}
    everything = [s for values in durations.values() for s in values]
    return per_bucket, {
        "median_seconds": _percentile(everything, 0.5),
        "p90_seconds": _percentile(everything, 0.9),
    }


def _queue_now(session: Session, task: Task, now: datetime) -> tuple[int, float | None]:
    depth, oldest = session.execute(
        select(func.count(), func.min(Case.created_at)).where(
            Case.task_id == task.id, Case.queue_state.in_(QUEUE_STATES)
        )
    ).one()
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else None
    return int(depth), age


def _queue_depth_series(
    session: Session,
    sql: _Sql,
    task: Task,
    window: Window,
    depth_now: int,
    entries: dict[datetime, int],
) -> dict[datetime, int]:
    """Queue depth at the end of each bucket, rebuilt backwards from the exact depth now.

    depth(t) = depth(now) − entries in (t, now] + exits in (t, now]. A case enters when it is
    created routed to people or drawn for audit; it leaves when resolved (routed cases) or
    when its audit label arrives (automatic ones). Approximation: a routed case whose first
    verdict came before ``since`` but which resolved later (a second reviewer) is not seen.
    """
    later_entries = session.scalar(
        select(func.count()).where(
            Case.task_id == task.id, Case.created_at >= window.until, _enters_queue()
        )
    )
    exit_at = case((Case.route == "review", Case.resolved_at), else_=Case.human_labelled_at)
    b_exit = sql.bucket(exit_at, window.bucket).label("b")
    exits: dict[Any, int] = dict(
        session.execute(  # type: ignore[arg-type]
            select(b_exit, func.count())
            .where(
                Case.task_id == task.id,
                Case.human_labelled_at >= window.since,
                _enters_queue(),
                exit_at.is_not(None),
            )
            .group_by(b_exit)
        ).all()
    )
    net: dict[datetime, int] = defaultdict(int, entries)
    for b, n in exits.items():
        net[sql.bucket_key(b)] -= int(n)
    starts = _bucket_starts(window)
    # Net change strictly after each bucket's end, up to now.
    after = int(later_entries or 0) + sum(n for key, n in net.items() if key > starts[-1])
    out: dict[datetime, int] = {}
    for start in reversed(starts):
        out[start] = max(0, depth_now - after)
        after += net.get(start, 0)
    return out


def reviewer_stats(session: Session, task: Task, window: Window) -> list[dict[str, Any]]:
    """Per reviewer (pseudonym): reviews, how often they overrode the model, median time,
    and how often they agreed with other people who judged the same case.

    Reviews are read through ``ix_reviews_reviewer_decided`` (reviewer, time): the user list
    is small, the reviews table is not.
    """
    users = dict(session.execute(select(User.id, User.pseudonym)).all())
    if not users:
        return []
    others = (
        select(func.count(Review.id))
        .where(Review.case_id == Case.id, Review.retracted_at.is_(None))
        .correlate(Case)
        .scalar_subquery()
    )
    rows = session.execute(
        select(
            Review.reviewer_id,
            Review.label,
            Review.agreed_with_model,
            Review.duration_ms,
            Case.final_label,
            Case.outcome_label,
            others.label("n_reviews"),
        )
        .join(Case, Case.id == Review.case_id)
        .where(
            Review.reviewer_id.in_(list(users)),
            Review.decided_at >= window.since,
            Review.decided_at < window.until,
            Review.task_id == task.id,
            Review.retracted_at.is_(None),
        )
    ).all()
    acc: dict[int, dict[str, list[Any]]] = defaultdict(
        lambda: {"agreed": [], "seconds": [], "consensus": []}
    )
    counts: dict[int, int] = defaultdict(int)
    for reviewer, label, agreed, duration_ms, final, outcome, n_reviews in rows:
        counts[reviewer] += 1
        a = acc[reviewer]
        if agreed is not None:
            a["agreed"].append(bool(agreed))
        if duration_ms is not None:
            a["seconds"].append(duration_ms / 1000.0)
        reference = outcome if outcome is not None else (final if n_reviews > 1 else None)
        if reference is not None:
            a["consensus"].append(label == reference)
    out: list[dict[str, Any]] = []
    for reviewer, n in counts.items():
        a = acc[reviewer]
        out.append(
            {
                "reviewer_id": users[reviewer],
                "reviews": n,
                "override_rate": (
                    1.0 - sum(a["agreed"]) / len(a["agreed"]) if a["agreed"] else None
                ),
                "median_seconds": _percentile(a["seconds"], 0.5),
                "agreement_rate": (
                    sum(a["consensus"]) / len(a["consensus"]) if a["consensus"] else None
                ),
            }
        )
    out.sort(key=lambda r: (-r["reviews"], r["reviewer_id"]))
    return out


def audit_agreement(
    session: Session, task: Task, window: Window, confidence: float
) -> dict[str, Any]:
    """How often two blind reviewers agree on an audited case (docs/review.md, "A second
    blind review"): over audited cases that arrived in the window and have two or more
    counted reviews, the share whose first two reviewers chose the same label, with its
    exact interval. A low figure means the audit ledger's labels are noisy, and so is every
    error bound certified on them.

    Only cases needing two or more reviewers can have two counted reviews, so the query is
    narrowed to those (a small share of a task's cases).
    """
    rows = session.execute(
        select(Review.case_id, Review.label)
        .join(Case, Case.id == Review.case_id)
        .where(
            Case.task_id == task.id,
            Case.audit == True,  # noqa: E712 (plain equality matches the ledger index)
            Case.reviews_required >= 2,
            Case.created_at >= window.since,
            Case.created_at < window.until,
            Review.retracted_at.is_(None),
        )
        .order_by(Review.case_id, Review.id)
    ).all()
    first_two: dict[str, list[str]] = defaultdict(list)
    for case_id, label in rows:
        if len(first_two[case_id]) < 2:
            first_two[case_id].append(label)
    pairs = [labels for labels in first_two.values() if len(labels) == 2]
    agreed = sum(1 for a, b in pairs if a == b)
    return {"n": len(pairs), "agreed": agreed, **exact_rate(agreed, len(pairs), confidence)}


def reference_scores(profile: dict[str, Any] | None) -> list[float] | None:
    """The training-time confidence sample stored with a version, if training kept one."""
    for key in REFERENCE_SCORE_KEYS:
        value = (profile or {}).get(key)
        if isinstance(value, dict):
            value = value.get("confidences") or value.get("values") or value.get("reference")
        if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
            return [float(v) for v in value]
    return None


def drift_status(session: Session, task: Task, window: Window) -> dict[str, Any]:
    """Label-free drift of the active version: PSI of recent confidences against the
    training-time reference, and per-field changes against the training profile."""
    frozen = bool(task.widening_frozen)
    if task.active_model_id is None:
        return {"warning": frozen, "psi": None, "fields": {}}
    profile = session.scalar(
        select(ModelVersion.profile).where(ModelVersion.id == task.active_model_id)
    )
    recent = and_(
        Case.task_id == task.id,
        Case.created_at >= window.since,
        Case.created_at < window.until,
        Case.model_version_id == task.active_model_id,
    )
    newest_first = Case.created_at.desc()
    value: float | None = None
    warning = frozen
    reference = reference_scores(profile)
    if reference is not None:
        scores = [
            float(c or 0.0)
            for c in session.scalars(
                select(Case.confidence)
                .where(recent, Case.confidence.is_not(None))
                .order_by(newest_first)
                .limit(DRIFT_RECENT_SCORES)
            )
        ]
        if scores:
            value = psi(reference, scores)
            warning = warning or drift_warning(
                reference, scores, reference_n=(profile or {}).get("reference_cases")
            )
    fields: dict[str, Any] = {}
    data = (profile or {}).get("data")
    if data:
        inputs = list(
            session.scalars(
                select(Case.input).where(recent).order_by(newest_first).limit(DRIFT_RECENT_INPUTS)
            )
        )
        if inputs:
            fields = _json_safe(drift_report(DataProfile.from_dict(data), inputs))
    return {"warning": bool(warning), "psi": _clean(value), "fields": fields}


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float):
        return _clean(value)
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    return value
