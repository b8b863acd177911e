"""The predict path: validate, score, route, flag for audit and persist each case
(docs/api.md, "Predict"; docs/policy.md).

Built for the hot path: one cheap query tells whether the cached task runtime is current, the
model is scored once per request (a batch in one call), and cases are written with one Core
``INSERT`` (no ORM objects), committed once by the caller.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import psycopg
from marshmallow import ValidationError
from sqlalchemy import JSON, Table, bindparam, exists, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from service import model_cache, routing
from service.db import thread_autocommit_connection, utcnow
from service.errors import Conflict, Forbidden, NotFound, Unavailable, ValidationFailed
from service.input_schema import FastValidator, fast_validator, validate_input
from service.models import Case, Task, new_ids
from service.policy import Policy, audit_draw
from service.services.audit import Actor
from service.services.tasks import current_audit_rate


@dataclass
class TaskRuntime:
    """Everything predict needs about a task, cached per process until its revision moves."""

    id: int
    name: str
    revision: int
    fields: list[dict[str, Any]]
    labels: list[str]
    policy: Policy
    automation_state: str
    threshold: float | None
    audit_rate: float
    reviews_required: int
    model: model_cache.LoadedModel | None
    never_automate: frozenset[str] = field(default_factory=frozenset)
    hold_audited: bool = False
    _validators: dict[int, FastValidator] = field(default_factory=dict, repr=False)

    def validator(self, max_text: int) -> FastValidator:
        """The plain-Python input check for these fields, found once per runtime (building
        its lookup key cost a single predict ~25 µs)."""
        found = self._validators.get(max_text)
        if found is None:
            found = self._validators[max_text] = fast_validator(self.fields, max_text)
        return found


_runtime_lock = threading.Lock()
_runtimes: dict[str, TaskRuntime] = {}


def task_runtime(session: Session, name: str, *, trust_cache: bool = False) -> TaskRuntime:
    """The task as predict needs it. With ``trust_cache`` a cached runtime is returned without
    a query: the caller then proves it current with the revision guard on its INSERT."""
    if trust_cache:
        cached = _runtimes.get(name)
        if cached is not None:
            return cached
    head = session.execute(select(Task.id, Task.revision).where(Task.name == name)).first()
    if head is None:
        raise NotFound(f"task {name!r} not found", {"task": name})
    cached = _runtimes.get(name)
    if cached is not None and cached.id == head.id and cached.revision == head.revision:
        return cached
    task = session.get(Task, head.id)
    assert task is not None
    model = None
    if task.active_model_id is not None:
        model = model_cache.load(session, task.active_model_id, task.fields, task.labels)
    policy = Policy.from_dict(task.policy)
    runtime = TaskRuntime(
        id=task.id,
        name=task.name,
        revision=task.revision,
        fields=list(task.fields),
        labels=list(task.labels),
        policy=policy,
        automation_state=task.automation_state,
        threshold=task.threshold,
        audit_rate=current_audit_rate(task),
        reviews_required=int(task.review.get("reviewers_per_case", 1)),
        model=model,
        never_automate=frozenset(policy.never_automate),
        hold_audited=task.policy.get("audit_mode") == "hold",
    )
    with _runtime_lock:
        _runtimes[name] = runtime
    return runtime


def cached_runtime(name: str) -> TaskRuntime | None:
    """The task's runtime if this process holds it (the caller proves it current when it
    stores: see :func:`store_one`), else None."""
    return _runtimes.get(name)


def forget(name: str) -> None:
    with _runtime_lock:
        _runtimes.pop(name, None)


def clear_cache() -> None:
    with _runtime_lock:
        _runtimes.clear()
    model_cache.clear()


@dataclass
class PredictRequest:
    input: Any
    external_id: str | None = None
    force_review: bool = False
    idempotency_key: str | None = None
    #: The item as sent, for the idempotency hash: a batch item is compared with the same
    #: canonical hash as a single predict body (its own ``idempotency_key`` left out), so an
    #: item retried alone with the same key and body is a replay too.
    body: Any = None


@dataclass
class ItemError:
    status: int
    code: str
    message: str
    details: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


#: The longest batch ``Idempotency-Key``: derived keys (``K:<index>``) must fit the 200
#: characters a stored key may have, indexes up to 9999 included.
MAX_BATCH_KEY = 195


def batch_item_key(batch_key: str, index: int) -> str:
    """The key of item ``index`` of a batch sent with ``Idempotency-Key: batch_key``
    (docs/api.md, "Idempotency"): resending the same key with the same items in the same
    order replays each of them; an item may carry its own key instead."""
    return f"{batch_key}:{index}"


def check_batch_key(batch_key: str) -> None:
    if not 1 <= len(batch_key) <= MAX_BATCH_KEY:
        raise ValidationFailed(
            "Invalid Idempotency-Key",
            {"Idempotency-Key": [f"1 to {MAX_BATCH_KEY} characters for a batch."]},
        )


def request_hash(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_item(
    rt: TaskRuntime, item: PredictRequest, max_text: int, fast: FastValidator | None = None
) -> dict[str, Any]:
    """The item's validated input, or ``ValidationFailed`` naming every bad field. ``fast``
    (a batch's validator, looked up once) answers the common all-valid item."""
    if (
        fast is not None
        and item.external_id is None
        and item.force_review is False
        and type(item.input) is dict
    ):
        loaded = fast(item.input)
        if loaded is not None:
            return loaded
    errors: dict[str, Any] = {}
    if item.external_id is not None and (
        not isinstance(item.external_id, str)
        or not 1 <= len(item.external_id) <= 200
        or "\x00" in item.external_id
    ):
        errors["external_id"] = ["Must be a string of 1 to 200 characters, without NUL."]
    if not isinstance(item.force_review, bool):
        errors["force_review"] = ["Not a boolean (use true or false)."]
    try:
        loaded = validate_input(rt.fields, item.input, max_text)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"input": exc.messages}
        if "input" in messages and len(messages) == 1 and not isinstance(item.input, dict):
            errors.update(messages)
        else:
            errors["input"] = messages
        loaded = {}
    if errors:
        raise ValidationFailed("Invalid fields: " + _names(errors), errors)
    return loaded


def _names(errors: dict[str, Any]) -> str:
    names: list[str] = []
    for key, value in errors.items():
        if key == "input" and isinstance(value, dict):
            names.extend(f"input.{k}" for k in value)
        else:
            names.append(key)
    return ", ".join(sorted(names))


def _score(rt: TaskRuntime, inputs: list[dict[str, Any]]) -> tuple[np.ndarray | None, list[str]]:
    if rt.model is None or not inputs:
        return None, rt.labels
    return rt.model.predictor.predict_proba_rows(inputs), rt.model.labels


def _build_rows(
    rt: TaskRuntime,
    items: list[PredictRequest],
    inputs: list[dict[str, Any]],
    *,
    request_id: str | None,
    hashes: list[str | None],
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    probs, model_labels = _score(rt, inputs)
    now = now or utcnow()
    rows: list[dict[str, Any]] = []
    model = rt.model
    check_range = model.out_of_range if model is not None else None
    # Vectorised once per request: per-row numpy scalar work dominated large batches.
    tops: list[int] = []
    confidences: list[float] = []
    rounded: list[list[float]] = []
    flags: list[list[str]] = []
    if probs is not None and len(inputs):
        top_index = probs.argmax(axis=1)
        tops = top_index.tolist()
        confidences = probs[np.arange(len(inputs)), top_index].tolist()
        rounded = np.round(probs, 6).tolist()
        if check_range is not None:
            flags = check_range.many(inputs)
    # What is the same for every row of the request, looked up once.
    has_model = model is not None
    label_thresholds = model.label_thresholds if model is not None else {}
    model_id = model.id if model is not None else None
    model_version = model.version if model is not None else None
    automating = rt.automation_state == "automating"
    audit_rate = rt.audit_rate
    ids = new_ids(len(items))
    for i, (item, values) in enumerate(zip(items, inputs, strict=True)):
        case_id = ids[i]
        suggestion = confidence = scores = None
        flagged_fields: list[str] = flags[i] if flags else []
        if tops:
            suggestion = model_labels[tops[i]]
            confidence = confidences[i]
            scores = dict(zip(model_labels, rounded[i], strict=True))
        threshold = (
            label_thresholds.get(suggestion, rt.threshold)
            if suggestion is not None
            else rt.threshold
        )
        audited = audit_draw(case_id) < audit_rate
        decision = routing.decide(
            has_model=has_model,
            automation_state=rt.automation_state,
            threshold=threshold,
            confidence=confidence,
            suggested_label=suggestion,
            force_review=bool(item.force_review),
            out_of_range=bool(flagged_fields),
            never_automate=rt.never_automate,
            audited=audited,
            hold_audited=rt.hold_audited,
        )
        auto = decision.route == "auto"
        rows.append(
            {
                "id": case_id,
                "task_id": rt.id,
                "external_id": item.external_id,
                "idempotency_key": item.idempotency_key,
                "request_hash": hashes[i],
                "input": values,
                "suggestion_label": suggestion,
                "confidence": confidence,
                "scores": scores,
                "model_version_id": model_id,
                "model_version": model_version,
                "threshold": threshold if automating else None,
                "route": decision.route,
                "reason": decision.reason,
                "audit": audited,
                # In the automatic region a human label comes only with the audit draw (held
                # audits included); everything else goes to people anyway.
                "label_probability": audit_rate if auto or decision.reason == "audit" else 1.0,
                "audit_rate": audit_rate,
                "out_of_range": flagged_fields or None,
                "status": decision.status,
                "queue_state": "waiting" if (not auto or audited) else None,
                "lease_owner_id": None,
                "lease_expires_at": None,
                "claimed_at": None,
                "reviews_required": rt.reviews_required,
                "final_label": suggestion if auto else None,
                "label_source": "model" if auto else None,
                "resolved_by_user_id": None,
                "resolved_at": now if auto else None,
                "human_label": None,
                "human_labelled_at": None,
                "outcome_label": None,
                "outcome_at": None,
                "request_id": request_id,
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


def build_row(
    rt: TaskRuntime,
    item: PredictRequest,
    values: dict[str, Any],
    *,
    request_id: str | None,
    digest: str | None = None,
) -> dict[str, Any]:
    """One case's row, routed, for a single predict (``digest``: the body's
    :func:`request_hash` when it carries an idempotency key)."""
    return _build_rows(rt, [item], [values], request_id=request_id, hashes=[digest])[0]


def case_view(row: Any) -> dict[str, Any]:
    """The predict result shape (docs/api.md, "Predict") from a case row, dict or ORM object.

    What the application sees: never the audit flag (docs/api.md, "Predict"). An application
    that knew which cases a person will check could treat them differently; analysts and
    admins read the flag through :func:`service.services.cases.case_detail_for`.
    """
    if not isinstance(row, dict):
        row = {key: getattr(row, key) for key in _VIEW_COLUMNS}
    created: datetime = row["created_at"]
    return _view(row, created.isoformat().replace("+00:00", "Z"))


def new_case_views(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`case_view` of each row a batch just stored, marked ``replayed: false``. The
    rows of one batch share their arrival time: it is written once, not once a row."""
    views: list[dict[str, Any]] = []
    created: datetime | None = None
    stamp = ""
    for row in rows:
        if row["created_at"] is not created:
            created = row["created_at"]
            assert created is not None
            stamp = created.isoformat().replace("+00:00", "Z")
        view = _view(row, stamp)
        view["replayed"] = False
        views.append(view)
    return views


_VIEW_COLUMNS = (
    "id",
    "external_id",
    "status",
    "route",
    "reason",
    "final_label",
    "suggestion_label",
    "confidence",
    "scores",
    "model_version",
    "threshold",
    "created_at",
)


def _view(row: dict[str, Any], created: str) -> dict[str, Any]:
    suggestion = None
    if row["suggestion_label"] is not None:
        suggestion = {
            "label": row["suggestion_label"],
            "confidence": round(float(row["confidence"]), 6),
            "scores": row["scores"],
        }
    status = row["status"]
    return {
        "case_id": row["id"],
        "external_id": row["external_id"],
        "status": status,
        "route": row["route"],
        "reason": row["reason"],
        "label": row["final_label"] if status in ("auto", "resolved", "corrected") else None,
        "suggestion": suggestion,
        "model_version": row["model_version"],
        "threshold": row["threshold"],
        "created_at": created,
    }


CASES: Table = Case.__table__  # type: ignore[assignment]
TASKS: Table = Task.__table__  # type: ignore[assignment]
MAX_STALE_RETRIES = 3


JSON_COLUMNS = frozenset(c.name for c in CASES.c if isinstance(c.type, JSON))
COPY_MIN_ROWS = 20


def _insert(session: Session, rows: list[dict[str, Any]]) -> None:
    """Store many cases in the request's transaction: PostgreSQL COPY for batches (several
    times faster than multi-row INSERT), Core executemany otherwise. Never ORM objects."""
    connection = session.connection()
    if connection.dialect.name != "postgresql" or len(rows) < COPY_MIN_ROWS:
        connection.execute(insert(CASES), rows)
        return
    raw = connection.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor, cursor.copy(_copy_sql(tuple(rows[0]))) as copy:
        _write_rows(copy, rows)


@functools.cache
def _copy_sql(columns: tuple[str, ...]) -> str:
    return "COPY cases ({}) FROM STDIN".format(", ".join(f'"{c}"' for c in columns))


@functools.cache
def _json_positions(columns: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(i for i, c in enumerate(columns) if c in JSON_COLUMNS)


def _write_rows(copy: Any, rows: list[dict[str, Any]]) -> None:
    """Rows (dicts in one column order, the order the COPY was opened with) into a COPY."""
    json_at = _json_positions(tuple(rows[0]))
    write_row = copy.write_row
    for row in rows:
        values = list(row.values())
        for i in json_at:
            if values[i] is not None:
                values[i] = dump_json(values[i])
        write_row(values)


#: Items validated, scored and built per step of a streamed batch (``_predict_streamed``).
STREAM_CHUNK = 100


def _predict_streamed(
    session: Session,
    rt: TaskRuntime,
    items: list[PredictRequest],
    *,
    max_text: int,
    request_id: str | None,
) -> list[dict[str, Any]]:
    """A batch without idempotency keys on PostgreSQL, streamed into one COPY.

    Why: built whole and then copied, a batch kept PostgreSQL idle while Python validated,
    scored and built every row, and Python idle while PostgreSQL stored them (the two took
    about as long). Sent a chunk at a time, PostgreSQL stores one chunk while Python
    prepares the next, on the other core (bench/README.md, "Batch predict"). Same rows, same
    transaction, same answers as the unstreamed path.
    """
    fast = fast_validator(rt.fields, max_text)
    now = utcnow()
    results: list[dict[str, Any]] = []
    raw = session.connection().connection.driver_connection
    assert raw is not None
    copy: Any = None
    with contextlib.ExitStack() as stack:
        for start in range(0, len(items), STREAM_CHUNK):
            slots: list[int] = []
            good_items: list[PredictRequest] = []
            inputs: list[dict[str, Any]] = []
            for item in items[start : start + STREAM_CHUNK]:
                try:
                    inputs.append(check_item(rt, item, max_text, fast))
                except ValidationFailed as exc:
                    results.append(ItemError(422, exc.code, exc.message, exc.details).as_dict())
                    continue
                slots.append(len(results))
                results.append({})
                good_items.append(item)
            if not good_items:
                continue
            rows = _build_rows(
                rt,
                good_items,
                inputs,
                request_id=request_id,
                hashes=[None] * len(good_items),
                now=now,
            )
            if copy is None:
                cursor = stack.enter_context(raw.cursor())
                copy = stack.enter_context(cursor.copy(_copy_sql(tuple(rows[0]))))
            _write_rows(copy, rows)
            for slot, view in zip(slots, new_case_views(rows), strict=True):
                results[slot] = view
    return results


def dump_json(value: Any) -> str:
    """A JSON column's text, as compact as ``json.dumps(separators=(",", ":"))`` and read back
    to the same value. orjson (Rust, ~13x faster a row here) writes it; what it refuses
    (an integer beyond 64 bits, a lone surrogate) goes through the standard library."""
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, UnicodeDecodeError):
        return json.dumps(value, separators=(",", ":"))


@functools.cache
def _guarded_insert(columns: tuple[str, ...], dialect: str, on_conflict: bool) -> Any:
    """INSERT ... SELECT <values> WHERE <the task is still at the cached revision>.

    One round trip both stores the case and proves the per-process task cache was current;
    when it was not, nothing is stored and the caller reloads the task and routes again.
    """
    guard = exists().where(
        TASKS.c.id == bindparam("guard_task_id"), TASKS.c.revision == bindparam("guard_revision")
    )
    values = select(*[bindparam(c, type_=CASES.c[c].type) for c in columns]).where(guard)
    base = postgresql.insert(CASES) if dialect == "postgresql" else sqlite.insert(CASES)
    stmt = base.from_select(list(columns), values)
    if on_conflict:
        stmt = stmt.on_conflict_do_nothing(
            index_elements=["task_id", "idempotency_key"],
            index_where=CASES.c.idempotency_key.is_not(None),
        )
    return stmt.returning(CASES.c.id)


@functools.cache
def _guarded_insert_text(
    columns: tuple[str, ...], dialect: Dialect, on_conflict: bool
) -> tuple[str, tuple[tuple[str, Callable[[Any], Any]], ...]]:
    """:func:`_guarded_insert` as the driver's SQL text, with the bind processors SQLAlchemy
    would apply (JSON serialised as the engine serialises it)."""
    compiled = _guarded_insert(columns, dialect.name, on_conflict).compile(dialect=dialect)
    processors: list[tuple[str, Callable[[Any], Any]]] = []
    for name in columns:
        if name in JSON_COLUMNS:
            # What SQLAlchemy's JSON type sends (None as JSON null), written by orjson as the
            # batch's COPY writes it: psycopg's JSON adapter used the standard library.
            processors.append((name, dump_json))
            continue
        processor = CASES.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors.append((name, processor))
    return str(compiled), tuple(processors)


def _store_one_postgresql(
    session: Session, bind: Engine | Connection, rt: TaskRuntime, row: dict[str, Any]
) -> bool:
    """The guarded INSERT sent through psycopg itself: SQLAlchemy's statement execution
    (cache lookup, 36 bind processors, result wrapping) and a pool checkout in autocommit
    were ~60% of a single predict's CPU (bench/README.md, "Single predict")."""
    sql, processors = _guarded_insert_text(
        tuple(row), bind.dialect, row["idempotency_key"] is not None
    )
    params = {**row, "guard_task_id": rt.id, "guard_revision": rt.revision}
    for name, processor in processors:
        params[name] = processor(params[name])
    conn: Any = None
    try:
        if isinstance(bind, Engine) and not session.in_transaction():
            conn = thread_autocommit_connection(bind)  # connecting may fail: caught below
        else:  # inside the request's transaction (a replay was looked up first; the tests)
            conn = session.connection().connection.driver_connection
        return conn.execute(sql, params).fetchone() is not None
    except psycopg.Error as exc:
        # As SQLAlchemy would raise it, so the API's handlers answer it (503, 422).
        broken = conn is None or conn.broken
        raise DBAPIError.instance(
            sql, params, exc, psycopg.Error, connection_invalidated=broken
        ) from exc


def store_one(session: Session, rt: TaskRuntime, row: dict[str, Any]) -> bool:
    """Store one case if ``rt`` is current; False when the task moved on (or the idempotency
    key already exists). Outside tests this is a single autocommitted statement: no BEGIN or
    COMMIT round trips on the hot path."""
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        return _store_one_postgresql(session, bind, rt, row)
    stmt = _guarded_insert(tuple(row), bind.dialect.name, row["idempotency_key"] is not None)
    params = {**row, "guard_task_id": rt.id, "guard_revision": rt.revision}
    if isinstance(bind, Engine) and not session.in_transaction():
        with bind.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return conn.execute(stmt, params).scalar() is not None
    return session.execute(stmt, params).scalar() is not None


def _check_scope(rt: TaskRuntime, actor: Actor) -> None:
    if not actor.may_access(rt.name):
        raise Forbidden(f"not allowed to use task {rt.name!r}", {"task": rt.name})


def authorize(session: Session, task: str | TaskRuntime, actor: Actor) -> TaskRuntime:
    """The task's runtime, once the caller is known to be allowed to use it (checked before
    the body is even parsed, so a caller outside the task learns nothing from validation).
    May come from the per-process cache; storing a case re-checks it for free."""
    rt = task if isinstance(task, TaskRuntime) else task_runtime(session, task, trust_cache=True)
    _check_scope(rt, actor)
    return rt


def predict_one(
    session: Session,
    task: str | TaskRuntime,
    item: PredictRequest,
    actor: Actor,
    *,
    body_for_hash: Any = None,
    request_id: str | None = None,
    max_text: int = 100_000,
) -> tuple[dict[str, Any], bool]:
    """Returns (case view, created). ``created`` is False for an idempotent replay."""
    rt = authorize(session, task, actor)
    digest = None
    if item.idempotency_key is not None:
        if not 1 <= len(item.idempotency_key) <= 200:
            raise ValidationFailed(
                "Invalid Idempotency-Key", {"Idempotency-Key": ["1 to 200 characters."]}
            )
        digest = request_hash(body_for_hash)
        replay = _replay(session, rt.id, item.idempotency_key, digest)
        if replay is not None:
            return replay, False
    for _ in range(MAX_STALE_RETRIES):
        values = check_item(rt, item, max_text)
        rows = _build_rows(rt, [item], [values], request_id=request_id, hashes=[digest])
        if store_one(session, rt, rows[0]):
            return case_view(rows[0]), True
        if item.idempotency_key is not None:
            # Another request with the same key may have won the race: answer with its case.
            replay = _replay(session, rt.id, item.idempotency_key, digest)
            if replay is not None:
                return replay, False
        forget(rt.name)  # the task changed since we cached it: reload and route again
        rt = authorize(session, rt.name, actor)
    raise Unavailable("the task kept changing while this case was stored; retry")


def _replay(session: Session, task_id: int, key: str, digest: str | None) -> dict[str, Any] | None:
    existing = session.scalar(
        select(Case).where(Case.task_id == task_id, Case.idempotency_key == key)
    )
    if existing is None:
        return None
    if existing.request_hash != digest:
        raise Conflict(
            "Idempotency-Key was already used with a different request body",
            {"Idempotency-Key": key, "case_id": existing.id},
        )
    return case_view(existing)


def predict_batch(
    session: Session,
    task: str | TaskRuntime,
    items: list[PredictRequest],
    actor: Actor,
    *,
    request_id: str | None = None,
    max_text: int = 100_000,
) -> list[dict[str, Any]]:
    """Results in request order; a bad item gets its error object in place, the rest are
    stored (docs/api.md, "Predict").

    Items with an idempotency key are never stored twice: the keys of the whole batch are
    looked up in one query; an item whose key is stored with the same body is answered with
    that case (``replayed: true``), with another body it gets a ``conflict`` error naming the
    case. Keyed cases are inserted with ``ON CONFLICT DO NOTHING``, so a concurrent retry
    that stored a key first wins and this request replays its case.
    """
    rt = authorize(session, task, actor)
    current = session.execute(select(Task.revision).where(Task.id == rt.id)).scalar()
    if current != rt.revision:
        forget(rt.name)
        rt = authorize(session, rt.name, actor)
    keys = [item.idempotency_key for item in items if item.idempotency_key is not None]
    if not keys and len(items) >= COPY_MIN_ROWS and session.get_bind().dialect.name == "postgresql":
        return _predict_streamed(session, rt, items, max_text=max_text, request_id=request_id)
    results: list[dict[str, Any] | None] = [None] * len(items)
    digests: list[str | None] = [None] * len(items)
    stored: dict[str, Case] = {}
    if keys:
        stored = _stored_by_key(session, rt.id, keys)
    seen: dict[str, int] = {}
    good: list[tuple[int, PredictRequest, dict[str, Any]]] = []
    fast = fast_validator(rt.fields, max_text)
    for i, item in enumerate(items):
        key = item.idempotency_key
        if key is not None:
            if key in seen:
                results[i] = _repeated_key(key, seen[key])
                continue
            seen[key] = i
            digests[i] = request_hash(_hashed_body(item))
            if key in stored:
                results[i] = _replayed_or_conflict(stored[key], key, digests[i])
                continue
        try:
            good.append((i, item, check_item(rt, item, max_text, fast)))
        except ValidationFailed as exc:
            results[i] = ItemError(422, exc.code, exc.message, exc.details).as_dict()
    if good:
        rows = _build_rows(
            rt,
            [g[1] for g in good],
            [g[2] for g in good],
            request_id=request_id,
            hashes=[digests[g[0]] for g in good],
        )
        keyed = [row for row in rows if row["idempotency_key"] is not None]
        plain = [row for row in rows if row["idempotency_key"] is None]
        if plain:
            _insert(session, plain)
        lost: set[str] = set()
        if keyed:
            inserted = _insert_keyed(session, keyed)
            lost = {row["idempotency_key"] for row in keyed if row["id"] not in inserted}
        winners = _stored_by_key(session, rt.id, sorted(lost)) if lost else {}
        for (i, _, _), row in zip(good, rows, strict=True):
            key = row["idempotency_key"]
            if key in lost:
                # A concurrent request stored this key first: answer with its case.
                results[i] = _replayed_or_conflict(winners[key], key, digests[i])
            else:
                view = case_view(row)
                view["replayed"] = False
                results[i] = view
    return [r for r in results if r is not None]


def _hashed_body(item: PredictRequest) -> Any:
    if isinstance(item.body, dict):
        return {k: v for k, v in item.body.items() if k != "idempotency_key"}
    if item.body is not None:
        return item.body
    body: dict[str, Any] = {"input": item.input}
    if item.external_id is not None:
        body["external_id"] = item.external_id
    if item.force_review:
        body["force_review"] = item.force_review
    return body


def _stored_by_key(session: Session, task_id: int, keys: list[str]) -> dict[str, Case]:
    """The task's cases stored under any of ``keys``: one query for the whole batch."""
    found = session.scalars(
        select(Case).where(Case.task_id == task_id, Case.idempotency_key.in_(keys))
    )
    return {case.idempotency_key: case for case in found if case.idempotency_key is not None}


def _replayed_or_conflict(case: Case, key: str, digest: str | None) -> dict[str, Any]:
    if case.request_hash != digest:
        return ItemError(
            409,
            "conflict",
            f"idempotency key {key!r} was already used with a different body (case {case.id})",
            {"idempotency_key": key, "case_id": case.id},
        ).as_dict()
    return {**case_view(case), "replayed": True}


def _repeated_key(key: str, first: int) -> dict[str, Any]:
    return ItemError(
        422,
        "validation_error",
        f"idempotency key {key!r} is used by item {first} of this batch already",
        {"idempotency_key": [f"Repeats the key of item {first}."]},
    ).as_dict()


@functools.cache
def _keyed_insert(dialect: str) -> Any:
    base = postgresql.insert(CASES) if dialect == "postgresql" else sqlite.insert(CASES)
    return base.on_conflict_do_nothing(
        index_elements=["task_id", "idempotency_key"],
        index_where=CASES.c.idempotency_key.is_not(None),
    ).returning(CASES.c.id)


@functools.cache
def _unnest_insert(columns: tuple[str, ...]) -> str:
    """PostgreSQL: every row in one statement of one array per column (``unnest``), so the
    statement stays small whatever the batch size. A multi-row VALUES (~35 parameters a row)
    made a keyed 1,000-item batch nine times as slow as an unkeyed one (COPY); this, ~1.7x."""
    dialect = postgresql.dialect()
    arrays = ", ".join(
        "%s::text[]" if c in JSON_COLUMNS else f"%s::{CASES.c[c].type.compile(dialect=dialect)}[]"
        for c in columns
    )
    values = ", ".join(f'"{c}"::json' if c in JSON_COLUMNS else f'"{c}"' for c in columns)
    quoted = ", ".join(f'"{c}"' for c in columns)
    # Names and types come from the Case model only; every value is a bound parameter.
    return (
        f"INSERT INTO cases ({quoted}) SELECT {values} FROM unnest({arrays}) AS u({quoted}) "  # noqa: S608
        "ON CONFLICT (task_id, idempotency_key) WHERE idempotency_key IS NOT NULL "
        "DO NOTHING RETURNING id"
    )


def _insert_keyed(session: Session, rows: list[dict[str, Any]]) -> set[str]:
    """Store cases that carry an idempotency key, skipping keys stored meanwhile; returns the
    ids stored. One statement (not COPY: COPY cannot skip a conflicting row). Rows go in key
    order, so two batches holding the same keys wait on each other instead of deadlocking."""
    connection = session.connection()
    ordered = sorted(rows, key=lambda row: row["idempotency_key"])
    if connection.dialect.name != "postgresql":
        return set(connection.execute(_keyed_insert(connection.dialect.name), ordered).scalars())
    columns = tuple(ordered[0])
    arrays: list[list[Any]] = []
    for column in columns:
        values = [row[column] for row in ordered]
        if column in JSON_COLUMNS:
            values = [None if v is None else dump_json(v) for v in values]
        arrays.append(values)
    return set(connection.exec_driver_sql(_unnest_insert(columns), tuple(arrays)).scalars())
