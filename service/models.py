"""The whole product's schema (docs/architecture.md).

Designed up front so later capabilities add behaviour, not tables. Works on PostgreSQL
(production) and SQLite (embedded): JSON columns use the generic ``JSON`` type, ids of
cases are strings (time-ordered, so inserts stay local in the primary-key index).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from service.db import Base, UTCDateTime, utcnow

ROLES = ("app", "reviewer", "analyst", "admin")
#: The roles a person's account may have: ``app`` is for applications' tokens (an account
#: with it could sign in to no page and review nothing).
PERSON_ROLES = ("reviewer", "analyst", "admin")
CASE_STATUSES = ("auto", "pending", "in_review", "resolved", "corrected")
ROUTES = ("auto", "review")
REASONS = (
    "confident",
    "low_confidence",
    "cold_start",
    "audit",
    "fallback",
    "invalid_input",
    "forced",
    "policy",
)
LABEL_SOURCES = ("model", "reviewer", "application")
MODEL_STATUSES = ("training", "candidate", "active", "retired", "failed")
AUTOMATION_STATES = ("manual", "automating", "fallback")

BigId = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = UTCDateTime()


#: Replaces :func:`new_id` in this context (``tandem simulate``: :func:`seeded_ids`).
_ID_SOURCE: ContextVar[Callable[[], str] | None] = ContextVar("tandem_id_source", default=None)


def _uuid7_layout(ms: int, rand: int) -> str:
    value = (ms << 80) | (rand & ((1 << 80) - 1))
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version nibble
    return f"{value:032x}"


def new_id() -> str:
    """Time-ordered 128-bit id as 32 hex chars (UUIDv7 layout: 48-bit ms clock + random)."""
    source = _ID_SOURCE.get()
    if source is not None:
        return source()
    return _uuid7_layout(int(time.time() * 1000), int.from_bytes(os.urandom(10), "big"))


def seeded_ids(seed: int, start_ms: int = 1_767_225_600_000) -> Callable[[], str]:
    """Ids that are the same in every run with the same seed: the k-th id carries the clock
    ``start_ms + k`` (so they stay time-ordered, in the order they were made) and random bits
    from a generator seeded with ``seed``.

    Why: the audit draw hashes the case id (docs/policy.md, "Audit draw"), so with fresh ids
    two replays of the same arrival order audit different cases. With these, a replay is
    repeatable, and two policies replayed with the same seed are compared on the same audit
    sample (common random numbers: paired differences need far fewer seeds)."""
    rng = random.Random(seed)
    counter = iter(range(1 << 40))

    def make() -> str:
        return _uuid7_layout(start_ms + next(counter), rng.getrandbits(80))

    return make


@contextmanager
def id_source(make: Callable[[], str]) -> Iterator[None]:
    """Run the block with ``make`` generating every new id in this context."""
    token = _ID_SOURCE.set(make)
    try:
        yield
    finally:
        _ID_SOURCE.reset(token)


def new_ids(n: int) -> list[str]:
    """``n`` ids as :func:`new_id` makes them, from one read of the random source."""
    source = _ID_SOURCE.get()
    if source is not None:
        return [source() for _ in range(n)]
    ms = int(time.time() * 1000) << 80
    rand = os.urandom(10 * n)
    clear, version = ~(0xF << 76), 0x7 << 76
    return [
        f"{((ms | int.from_bytes(rand[10 * i : 10 * i + 10], 'big')) & clear) | version:032x}"
        for i in range(n)
    ]


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    # Task names the user may see; None means every task.
    task_scope: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # Stable pseudonym shown in exports instead of the e-mail address.
    pseudonym: Mapped[str] = mapped_column(String(32), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # Part of every login session; moving it on (logout, password reset, deactivation) ends
    # all of the user's sessions at once, wherever their cookies are.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # SHA-256 of the token: tokens carry 256 random bits, so a fast hash is safe here and
    # keeps per-request authentication cheap; the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    task_scope: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # A token may act for a person (e.g. a reviewer's own tool): reviews need a user.
    user_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id"), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    labels: Mapped[list[str]] = mapped_column(JSON)
    fields: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    review: Mapped[dict[str, Any]] = mapped_column(JSON)
    webhook_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    webhook_secret: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Live automation state: written only by promotion, rollback and fallback, in one
    # transaction with the audit event that explains it.
    automation_state: Mapped[str] = mapped_column(String(16), default="manual")
    active_model_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("model_versions.id", use_alter=True), nullable=True
    )
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    certified_error_bound: Mapped[float | None] = mapped_column(Float, nullable=True)
    coverage: Mapped[float | None] = mapped_column(Float, nullable=True)
    audit_multiplier: Mapped[float] = mapped_column(Float, default=1.0)
    widening_frozen: Mapped[bool] = mapped_column(Boolean, default=False)
    automation_changed_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # Why the automation is in its state, in a sentence for the admin (its latest change).
    automation_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # Start of the current ledger epoch (None: since the task began). A fallback starts a new
    # one: recovery is certified on audits drawn after the alarm only (docs/policy.md).
    ledger_since: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # Bumped on every change so per-process caches can check freshness with one cheap query.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)

    active_model: Mapped[ModelVersion | None] = relationship(
        foreign_keys=[active_model_id], post_update=True, lazy="joined"
    )


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("task_id", "version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(BigId, ForeignKey("tasks.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="training")
    family: Mapped[str | None] = mapped_column(String(64), nullable=True)
    artefact: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    artefact_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The compiled predictor as NumPy arrays (service/ml/fast.py, ``predictor_state``): a web
    # process scores from it without loading scikit-learn. None: compile from the artefact.
    predictor: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, deferred=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Which labelled cases trained it: count, id range, hash of the ordered id list.
    training_snapshot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Training-data profile for invalid_input routing and drift checks.
    profile: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    certification: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    error_bound: Mapped[float | None] = mapped_column(Float, nullable=True)
    coverage: Mapped[float | None] = mapped_column(Float, nullable=True)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    parent_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("model_versions.id"), nullable=True
    )
    job_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    trained_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    activated_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class Case(Base):
    __tablename__ = "cases"
    __table_args__ = (
        # Partial indexes: most cases at high automation are answered, never queued, carry
        # no key or external id and get no label; they cost no entry in these indexes.
        Index(
            "uq_cases_task_idempotency",
            "task_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
        # Review queue: waiting cases of a task, oldest first (claim and queue listing).
        Index(
            "ix_cases_queue",
            "task_id",
            "queue_state",
            "created_at",
            postgresql_where=text("queue_state IS NOT NULL"),
            sqlite_where=text("queue_state IS NOT NULL"),
        ),
        # Audit-first ordering within the queue.
        Index(
            "ix_cases_queue_audit",
            "task_id",
            "queue_state",
            "audit",
            "created_at",
            postgresql_where=text("queue_state IS NOT NULL"),
            sqlite_where=text("queue_state IS NOT NULL"),
        ),
        Index(
            "ix_cases_task_external",
            "task_id",
            "external_id",
            postgresql_where=text("external_id IS NOT NULL"),
            sqlite_where=text("external_id IS NOT NULL"),
        ),
        # The audit ledger of a task (certification and live watch).
        Index(
            "ix_cases_ledger",
            "task_id",
            "created_at",
            postgresql_where=text("audit"),
            sqlite_where=text("audit"),
        ),
        Index("ix_cases_task_created_id", "task_id", "created_at", "id"),
        Index(
            "ix_cases_task_labelled",
            "task_id",
            "human_labelled_at",
            postgresql_where=text("human_labelled_at IS NOT NULL"),
            sqlite_where=text("human_labelled_at IS NOT NULL"),
        ),
        Index(
            "ix_cases_lease",
            "lease_expires_at",
            postgresql_where=text("lease_expires_at IS NOT NULL"),
            sqlite_where=text("lease_expires_at IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    task_id: Mapped[int] = mapped_column(BigId, ForeignKey("tasks.id", ondelete="CASCADE"))
    external_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    suggestion_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    scores: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    model_version_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("model_versions.id"), nullable=True
    )
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    route: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(32))
    audit: Mapped[bool] = mapped_column(Boolean, default=False)
    # Probability that this case receives a human label, fixed at arrival: 1 for routed
    # cases, the flag rate for automatic ones. Weights for unbiased (Hájek) estimates.
    label_probability: Mapped[float] = mapped_column(Float, default=1.0)
    audit_rate: Mapped[float] = mapped_column(Float, default=0.0)
    out_of_range: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    # Review queue membership: 'waiting', 'leased' or NULL (not in the queue).
    queue_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    lease_owner_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("users.id"), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    reviews_required: Mapped[int] = mapped_column(Integer, default=1)
    final_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    label_source: Mapped[str | None] = mapped_column(String(16), nullable=True)
    resolved_by_user_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("users.id"), nullable=True
    )
    resolved_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # The first human verdict, whoever decided the final label: a reviewer's, or the
    # application's outcome on a case outside the audit sample (an audited case's label is
    # always its blind review; an outcome there goes to outcome_label only). Training data,
    # the audit ledger and the live watch all read this one column.
    human_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    human_labelled_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    # Ground truth reported later by the application (kept apart from the reviewers' label).
    outcome_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    outcome_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)

    reviews: Mapped[list[Review]] = relationship(
        back_populates="case", order_by="Review.id", lazy="selectin"
    )


class Review(Base):
    """One human decision. Append-only: an undo marks ``retracted_at``, it never deletes."""

    __tablename__ = "reviews"
    __table_args__ = (
        Index("ix_reviews_case", "case_id"),
        Index("ix_reviews_reviewer_decided", "reviewer_id", "decided_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    case_id: Mapped[str] = mapped_column(String(32), ForeignKey("cases.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(BigId, ForeignKey("tasks.id", ondelete="CASCADE"))
    reviewer_id: Mapped[int] = mapped_column(BigId, ForeignKey("users.id"))
    label: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    suggested_label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    agreed_with_model: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    decided_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    retracted_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)

    case: Mapped[Case] = relationship(back_populates="reviews")


class AuditEvent(Base):
    """Append-only record of every decision a person or the system made."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_task_created", "task_id", "created_at"),
        Index("ix_audit_events_case", "case_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    action: Mapped[str] = mapped_column(String(64))
    actor_type: Mapped[str] = mapped_column(String(16))  # user | token | system
    actor: Mapped[str] = mapped_column(String(320))
    task_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    case_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class RetrainLabel(Base):
    """Human labels counted toward the next training (the ``retrain_every`` trigger), one row
    per label, summed when read (service.services.training.labels_since_training).

    Append-only instead of a counter on the task row: an ``UPDATE tasks`` per decision made
    every decision of a task wait for the one before it to commit (bench/README.md, "Decide
    without a hot row"). Inserts never wait on each other. A request for training deletes
    the rows it has counted; rows pile up to ``retrain_every`` at most, plus those compacted
    into one row of ``n`` labels when a large ``retrain_every`` would let them grow."""

    __tablename__ = "retrain_labels"
    __table_args__ = (Index("ix_retrain_labels_task", "task_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(BigId, ForeignKey("tasks.id", ondelete="CASCADE"))
    n: Mapped[int] = mapped_column(Integer, default=1)


class Job(Base):
    """A background job as the product sees it (RQ holds the queue, this holds the story)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_task_kind", "task_id", "kind", "created_at"),)

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # train | export | webhook | maintenance
    task_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str | None] = mapped_column(String(320), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)


class OutboxEntry(Base):
    """Work to enqueue once the transaction that made it needed has committed.

    Written in the same transaction as the change; relayed to Redis after commit and by the
    periodic sweeper, so a Redis outage delays work but never loses it.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_pending", "enqueued_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    queue: Mapped[str] = mapped_column(String(32))
    func: Mapped[str] = mapped_column(String(200))
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class WebhookDelivery(Base):
    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_task_status", "task_id", "status"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    task_id: Mapped[int] = mapped_column(BigId, ForeignKey("tasks.id", ondelete="CASCADE"))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    url: Mapped[str] = mapped_column(String(2000))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)


class Export(Base):
    __tablename__ = "exports"
    __table_args__ = (Index("ix_exports_task_created", "task_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    task_id: Mapped[int] = mapped_column(BigId, ForeignKey("tasks.id", ondelete="CASCADE"))
    format: Mapped[str] = mapped_column(String(16))
    filters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued|running|done|failed
    row_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    path: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(320), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp, nullable=True)
