"""Feedback export for analysts (docs/export.md): filters, the row builder and the file writers.

One row per case. On PostgreSQL the export's query runs as ``COPY (…) TO STDOUT (FORMAT csv)``
and Arrow's CSV reader parses each block of rows straight into typed columns (no Python object
per value); on SQLite rows are read in batches through a streaming result (Core select, never
ORM objects). Either way they become the same Arrow record batches, written batch by batch, so
memory stays flat however many rows there are. Ordering (created_at, id) and formatting are
fixed, so the same filters on unchanged data give a byte-identical file; that is what makes
an export's SHA-256 a proof of what an analyst worked from.

Never exported: tokens, password hashes, webhook secrets, e-mail addresses (unless an admin
asks for real reviewer identities).
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson
from sqlalchemy import (
    BigInteger,
    DateTime,
    Select,
    Text,
    and_,
    cast,
    extract,
    func,
    literal_column,
    select,
    true,
    type_coerce,
)
from sqlalchemy import case as sql_case
from sqlalchemy.orm import Session, aliased

from service import queues
from service.db import utcnow
from service.errors import Forbidden, NotFound, ValidationFailed
from service.ml.lazy import lazy_module
from service.models import (
    CASE_STATUSES,
    LABEL_SOURCES,
    REASONS,
    ROUTES,
    Case,
    Export,
    Job,
    Review,
    Task,
    User,
)
from service.services import audit, jobs
from service.services.audit import Actor

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq
else:  # pyarrow (~40 MB) loads with the first export, not with every web process
    pa = lazy_module("pyarrow")
    pc = lazy_module("pyarrow.compute")
    pa_csv = lazy_module("pyarrow.csv")
    pa_json = lazy_module("pyarrow.json")
    pq = lazy_module("pyarrow.parquet")

FORMATS = ("csv", "jsonl", "parquet")
CONTENT_TYPES = {
    "csv": "text/csv; charset=utf-8",
    "jsonl": "application/x-ndjson; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
IDENTITIES = ("pseudonym", "real")
FILTER_NAMES = (
    "from",
    "to",
    "label_source",
    "route",
    "reason",
    "status",
    "final_label",
    "audit",
    "agreement",
    "model_version",
    "reviewer",
)
#: Filters that take several values (repeated query parameter, JSON list, repeated CLI
#: option): a case matches when its value is any of them.
MULTI_VALUED = (
    "label_source",
    "route",
    "reason",
    "status",
    "final_label",
    "model_version",
    "reviewer",
)
AGREEMENTS = ("agree", "disagree")
#: The files a snapshot may hold: the cases (always) and, when asked for, every review.
SNAPSHOT_FILES = ("data", "reviews")
# Rows fetched per round trip and written per Parquet row group / CSV chunk.
BATCH_ROWS = 10_000
EXPORT_JOB = "workers.jobs.exports.run_export"
# 2: inclusion_probability, status, human_label, human_label_source, outcome and overridden
# were added; the labels and the optional reviews file joined the manifest.
SCHEMA_VERSION = "2"
_TS_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # Arrow's %S carries the microseconds: fixed width


def _ts_type() -> pa.DataType:
    return pa.timestamp("us", tz="UTC")


def _input_type(field_type: str) -> pa.DataType:
    return {"text": pa.string(), "category": pa.string(), "number": pa.float64()}.get(
        field_type, pa.bool_()
    )


_FILENAME_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
STDOUT_NAME = "<stdout>"


# --- filters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFilters:
    """Validated filters. ``created_from`` is inclusive, ``created_to`` exclusive. A
    multi-valued filter holds its values sorted and without repeats (empty: not set)."""

    created_from: datetime | None = None
    created_to: datetime | None = None
    label_source: tuple[str, ...] = ()
    route: tuple[str, ...] = ()
    reason: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    final_label: tuple[str, ...] = ()
    audit: bool | None = None
    agreement: str | None = None
    model_version: tuple[int, ...] = ()
    reviewer: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Canonical form (only the filters set, public names, ISO timestamps, one value as
        itself and several as a sorted list): stored in manifests and audit events, and
        accepted back by :func:`parse_filters`."""
        out: dict[str, Any] = {
            "from": iso(self.created_from),
            "to": iso(self.created_to),
            "label_source": _canonical(self.label_source),
            "route": _canonical(self.route),
            "reason": _canonical(self.reason),
            "status": _canonical(self.status),
            "final_label": _canonical(self.final_label),
            "audit": self.audit,
            "agreement": self.agreement,
            "model_version": _canonical(self.model_version),
            "reviewer": _canonical(self.reviewer),
        }
        return {k: v for k, v in out.items() if v is not None}


def _canonical(values: tuple[Any, ...]) -> Any:
    if not values:
        return None
    return values[0] if len(values) == 1 else list(values)


@dataclass(frozen=True)
class ExportSpec:
    format: str
    filters: ExportFilters
    identity: str = "pseudonym"
    #: Snapshots only: also write every review of the exported cases (``reviews.<format>``).
    reviews: bool = False


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _parse_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("an ISO 8601 timestamp string")
    text = value.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            d = date.fromisoformat(text)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError("an ISO 8601 timestamp, e.g. 2024-05-01T00:00:00Z") from exc
    # A timestamp without an offset is read as UTC (every stored time is UTC).
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _parse_choice(value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.strip() not in choices:
        raise ValueError("one of: " + ", ".join(choices))
    return value.strip()


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError("true or false")


def _parse_version(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a positive integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d{1,9}\s*", value):
        number = int(value)
    else:
        raise ValueError("a positive integer")
    if number < 1:
        raise ValueError("a positive integer")
    return number


def _parse_reviewer(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", value.strip()):
        raise ValueError("a reviewer pseudonym, e.g. r_1a2b3c4d5e6f")
    return value.strip()


def _parse_label(value: Any, labels: list[str] | None) -> str:
    """A label exactly as the task spells it (labels may hold spaces and commas)."""
    if not isinstance(value, str) or not 1 <= len(value) <= 200:
        raise ValueError("a label of the task")
    if labels is not None and value not in labels:
        raise ValueError("one of the task's labels: " + ", ".join(labels))
    return value


def _given(value: Any) -> list[Any]:
    """The values given for one filter: a list (JSON, repeated query parameter) or one value;
    empty values count as not given."""
    items = list(value) if isinstance(value, list | tuple) else [value]
    return [v for v in items if not _blank(v)]


def parse_filters(
    raw: Mapping[str, Any], session: Session | None = None, *, labels: list[str] | None = None
) -> ExportFilters:
    """Validate filters from a query string or a JSON object; every problem is reported at
    once (422 naming each filter). Empty values count as not set (HTML forms send them).
    A multi-valued filter takes a list (or one value); the others exactly one value. With a
    session, a reviewer pseudonym must belong to a user; with ``labels`` (the task's), a
    final label must be one of them."""
    errors: dict[str, list[str]] = {}
    unknown = sorted(k for k in raw if k not in FILTER_NAMES)
    for name in unknown:
        errors[name] = ["Unknown filter. Known: " + ", ".join(FILTER_NAMES) + "."]
    values: dict[str, Any] = {}
    parsers: dict[str, Any] = {
        "from": _parse_time,
        "to": _parse_time,
        "label_source": lambda v: _parse_choice(v, LABEL_SOURCES),
        "route": lambda v: _parse_choice(v, ROUTES),
        "reason": lambda v: _parse_choice(v, REASONS),
        "status": lambda v: _parse_choice(v, CASE_STATUSES),
        "final_label": lambda v: _parse_label(v, labels),
        "audit": _parse_bool,
        "agreement": lambda v: _parse_choice(v, AGREEMENTS),
        "model_version": _parse_version,
        "reviewer": _parse_reviewer,
    }
    for name, parse in parsers.items():
        given = _given(raw[name]) if name in raw else []
        if not given:
            continue
        if name not in MULTI_VALUED and (len(given) > 1 or isinstance(raw[name], list)):
            errors[name] = ["Takes one value, not a list."]
            continue
        try:
            parsed = [parse(v) for v in given]
        except ValueError as exc:
            errors[name] = [f"Must be {exc}."]
            continue
        values[name] = tuple(sorted(set(parsed))) if name in MULTI_VALUED else parsed[0]
    if "from" in values and "to" in values and values["from"] >= values["to"]:
        errors["to"] = ["Must be later than 'from'."]
    if session is not None and "reviewer" in values and "reviewer" not in errors:
        wanted = set(values["reviewer"])
        known = set(session.scalars(select(User.pseudonym).where(User.pseudonym.in_(wanted))))
        if wanted - known:
            missing = ", ".join(sorted(wanted - known))
            errors["reviewer"] = [f"No reviewer has this pseudonym: {missing}."]
    if errors:
        raise ValidationFailed("Invalid export filters: " + ", ".join(sorted(errors)), errors)
    return ExportFilters(
        created_from=values.get("from"),
        created_to=values.get("to"),
        label_source=values.get("label_source", ()),
        route=values.get("route", ()),
        reason=values.get("reason", ()),
        status=values.get("status", ()),
        final_label=values.get("final_label", ()),
        audit=values.get("audit"),
        agreement=values.get("agreement"),
        model_version=values.get("model_version", ()),
        reviewer=values.get("reviewer", ()),
    )


def parse_request(
    params: Mapping[str, Any],
    actor: Actor,
    session: Session,
    *,
    task: Task | None = None,
    default_format: str | None = None,
    reviews: Any = None,
) -> ExportSpec:
    """``format``, ``identity`` and the filters of one export request, all validated
    (a final label against ``task``'s labels when given); ``reviews`` (snapshots only) asks
    for the reviews file too."""
    raw = dict(params)
    errors: dict[str, list[str]] = {}
    fmt = raw.pop("format", default_format)
    if fmt not in FORMATS:
        errors["format"] = ["Must be one of: " + ", ".join(FORMATS) + "."]
    identity = raw.pop("identity", None) or "pseudonym"
    if identity not in IDENTITIES:
        errors["identity"] = ["Must be one of: " + ", ".join(IDENTITIES) + "."]
    if reviews is not None and not isinstance(reviews, bool):
        errors["reviews"] = ["Must be true or false."]
    try:
        filters = parse_filters(raw, session, labels=list(task.labels) if task else None)
    except ValidationFailed as exc:
        errors.update(exc.details)
    if errors:
        raise ValidationFailed("Invalid export request: " + ", ".join(sorted(errors)), errors)
    if identity == "real" and actor.role != "admin":
        raise Forbidden(
            "only admins may export real reviewer identities", {"identity": ["admin only"]}
        )
    return ExportSpec(
        format=str(fmt), filters=filters, identity=str(identity), reviews=bool(reviews)
    )


# --- the row builder -----------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    """UTC ISO 8601 with 'Z' and fixed microseconds (the one timestamp format of exports)."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _metadata(task: Task, table: str) -> dict[str, str]:
    return {
        "tandem.task": task.name,
        "tandem.export_schema": SCHEMA_VERSION,
        "tandem.table": table,
        "tandem.labels": json.dumps(list(task.labels), ensure_ascii=False),
    }


def export_schema(task: Task) -> pa.Schema:
    """Column names and Arrow types, in file order (the manifest's ``schema``). The one
    declaration every format is written from (docs/export.md, "Columns")."""
    cols: list[tuple[str, pa.DataType]] = [("case_id", pa.string()), ("external_id", pa.string())]
    cols += [(f"input.{f['name']}", _input_type(f["type"])) for f in task.fields]
    cols += [("suggestion", pa.string()), ("confidence", pa.float64())]
    cols += [(f"score.{label}", pa.float64()) for label in task.labels]
    cols += [
        ("model_version", pa.int64()),
        ("route", pa.string()),
        ("reason", pa.string()),
        ("audit", pa.bool_()),
        ("inclusion_probability", pa.float64()),
        ("status", pa.string()),
        ("final_label", pa.string()),
        ("label_source", pa.string()),
        ("human_label", pa.string()),
        ("human_label_source", pa.string()),
        ("outcome", pa.string()),
        ("overridden", pa.bool_()),
        ("reviewer", pa.string()),
        ("review_time", _ts_type()),
        ("review_seconds", pa.float64()),
        ("time_to_decision_seconds", pa.float64()),
        ("created_at", _ts_type()),
        ("resolved_at", _ts_type()),
    ]
    return pa.schema([pa.field(n, t) for n, t in cols], metadata=_metadata(task, "cases"))


def reviews_schema(task: Task) -> pa.Schema:
    """The reviews file of a snapshot: one row per review of the exported cases."""
    cols: list[tuple[str, pa.DataType]] = [
        ("review_id", pa.int64()),
        ("case_id", pa.string()),
        ("reviewer", pa.string()),
        ("label", pa.string()),
        ("comment", pa.string()),
        ("suggested_label", pa.string()),
        ("agreed_with_model", pa.bool_()),
        ("claimed_at", _ts_type()),
        ("decided_at", _ts_type()),
        ("review_seconds", pa.float64()),
        ("retracted_at", _ts_type()),
    ]
    return pa.schema([pa.field(n, t) for n, t in cols], metadata=_metadata(task, "reviews"))


def schema_description(schema: pa.Schema) -> list[dict[str, str]]:
    return [{"name": f.name, "type": str(f.type)} for f in schema]


def _raw_time(column: Any) -> Any:
    # Plain DateTime instead of the UTC TypeDecorator: no per-value Python call. PostgreSQL
    # returns aware datetimes, SQLite naive UTC ones; Arrow reads both as UTC.
    return type_coerce(column, DateTime(timezone=True))


def _epoch_micros(column: Any) -> Any:
    """A time as whole microseconds since 1970 UTC (the COPY path): exact (EXTRACT gives a
    numeric), and independent of the session's DateStyle and TimeZone, which shape
    PostgreSQL's text of a timestamp."""
    return cast(extract("epoch", column) * literal_column("1000000"), BigInteger)


def _human_label_source() -> Any:
    """Who gave the case's human label: the application when its outcome became the label
    (``record_outcome`` stamps both times with the same instant), else the reviewers."""
    from_outcome = and_(Case.outcome_label.is_not(None), Case.outcome_at == Case.human_labelled_at)
    return sql_case(
        (Case.human_label.is_(None), None),
        (from_outcome, "application"),
        else_="reviewer",
    )


def build_query(
    task: Task,
    spec: ExportSpec,
    dialect: str = "postgresql",
    times: Callable[[Any], Any] = _raw_time,
) -> Select[Any]:
    """One Core select, rows in export order (created_at, id); ``times`` renders each time
    column (the COPY path reads them as epoch microseconds).

    The deciding review is the resolver's latest live review, else the latest live review
    (e.g. an audit that confirmed the model). On PostgreSQL it is a ``LEFT JOIN LATERAL``
    (one index probe per exported case, order preserved); on SQLite two correlated
    subqueries (the resolver's latest review, else the latest).
    The JSON columns come back as text and are parsed a batch at a time by Arrow's JSON
    reader, which is cheaper than extracting each field in SQL (PostgreSQL re-parses ``json``
    per field). The columns are those of :data:`CASE_COLUMN_TYPES`, in its order.
    """
    r2 = aliased(Review)
    who = User.email if spec.identity == "real" else User.pseudonym
    if dialect == "postgresql":
        deciding: Any = (
            select(r2.reviewer_id, r2.decided_at, r2.duration_ms)
            .where(r2.case_id == Case.id, r2.retracted_at.is_(None))
            .order_by(
                sql_case((r2.reviewer_id == Case.resolved_by_user_id, 0), else_=1),
                r2.decided_at.desc(),
                r2.id.desc(),
            )
            .limit(1)
            .lateral("deciding")
        )
        source = (
            select()
            .select_from(Case)
            .outerjoin(deciding, true())
            .outerjoin(User, User.id == deciding.c.reviewer_id)
        )
        decided_at, duration = deciding.c.decided_at, deciding.c.duration_ms
    else:
        # SQLite (3.40.1, Debian 12's) refuses an outer column in a correlated subquery's
        # ORDER BY ("no such column: cases.resolved_by_user_id"), so the same choice is
        # written with outer columns in WHERE only: the resolver's latest, else the latest.
        def latest(*extra: Any) -> Any:
            return (
                select(r2.id)
                .where(r2.case_id == Case.id, r2.retracted_at.is_(None), *extra)
                .order_by(r2.decided_at.desc(), r2.id.desc())
                .limit(1)
                .scalar_subquery()
            )

        chosen = func.coalesce(latest(r2.reviewer_id == Case.resolved_by_user_id), latest())
        source = (
            select()
            .select_from(Case)
            .outerjoin(Review, Review.id == chosen)
            .outerjoin(User, User.id == Review.reviewer_id)
        )
        decided_at, duration = Review.decided_at, Review.duration_ms
    stmt = source.add_columns(
        Case.id,
        Case.external_id,
        cast(Case.input, Text),
        Case.suggestion_label,
        Case.confidence,
        cast(Case.scores, Text),
        Case.model_version,
        Case.route,
        Case.reason,
        Case.audit,
        Case.label_probability,
        Case.status,
        Case.final_label,
        Case.label_source,
        Case.human_label,
        _human_label_source(),
        Case.outcome_label,
        who,
        times(decided_at),
        duration,
        times(Case.created_at),
        times(Case.resolved_at),
    ).where(Case.task_id == task.id, *_conditions(spec.filters))
    if spec.filters.reviewer:
        stmt = stmt.where(_any_of(User.pseudonym, spec.filters.reviewer))
    return stmt.order_by(Case.created_at, Case.id)


def _any_of(column: Any, values: tuple[Any, ...]) -> Any:
    # A plain equality for one value keeps the statement (and its plan) as it was; IN is
    # rendered with its values inline as bound parameters (the named cursor compiles once).
    return column == values[0] if len(values) == 1 else column.in_(values)


def _conditions(filters: ExportFilters) -> list[Any]:
    where: list[Any] = []
    if filters.created_from is not None:
        where.append(Case.created_at >= filters.created_from)
    if filters.created_to is not None:
        where.append(Case.created_at < filters.created_to)
    for column, values in (
        (Case.label_source, filters.label_source),
        (Case.route, filters.route),
        (Case.reason, filters.reason),
        (Case.status, filters.status),
        (Case.final_label, filters.final_label),
        (Case.model_version, filters.model_version),
    ):
        if values:
            where.append(_any_of(column, values))
    if filters.audit is not None:
        where.append(Case.audit.is_(filters.audit))
    if filters.agreement is not None:
        both = and_(Case.human_label.is_not(None), Case.suggestion_label.is_not(None))
        same = Case.human_label == Case.suggestion_label
        where.append(and_(both, same if filters.agreement == "agree" else ~same))
    return where


def _dialect(session: Session) -> str:
    return str(session.get_bind().dialect.name)


def count_rows(session: Session, task: Task, spec: ExportSpec) -> int:
    """How many rows the export has now (for the audit event written before streaming)."""
    if not spec.filters.reviewer:
        stmt = select(func.count()).select_from(Case).where(Case.task_id == task.id)
        stmt = stmt.where(*_conditions(spec.filters))
    else:
        inner = build_query(task, spec, _dialect(session)).order_by(None).subquery()
        stmt = select(func.count()).select_from(inner)
    return int(session.scalar(stmt) or 0)


def build_reviews_query(
    task: Task,
    spec: ExportSpec,
    dialect: str = "postgresql",
    times: Callable[[Any], Any] = _raw_time,
) -> Select[Any]:
    """Every review (undone ones included, marked) of the cases the same spec exports, in
    the cases' order, then as decided. With a reviewer filter the cases are those the
    filtered export holds (their deciding reviewer); all their reviews are listed. The
    columns are those of :data:`REVIEW_COLUMN_TYPES`."""
    who = User.email if spec.identity == "real" else User.pseudonym
    stmt = (
        select(
            Review.id,
            Review.case_id,
            who,
            Review.label,
            Review.comment,
            Review.suggested_label,
            Review.agreed_with_model,
            times(Review.claimed_at),
            times(Review.decided_at),
            Review.duration_ms,
            times(Review.retracted_at),
        )
        .select_from(Review)
        .join(Case, Case.id == Review.case_id)
        .join(User, User.id == Review.reviewer_id)
        .where(Case.task_id == task.id, *_conditions(spec.filters))
    )
    if spec.filters.reviewer:
        exported = build_query(task, spec, dialect).order_by(None).subquery()
        stmt = stmt.where(Case.id.in_(select(exported.c.id)))
    return stmt.order_by(Case.created_at, Case.id, Review.id)


def _column(values: Sequence[Any], typ: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # A value stored before a field's type was enforced: keep it visible, as text for
        # string columns and missing for typed ones, rather than failing the whole export.
        if typ == pa.string():
            return pa.array([v if v is None or isinstance(v, str) else json.dumps(v)
                             for v in values], type=typ)  # fmt: skip
        ok = (bool,) if typ == pa.bool_() else (int, float)
        return pa.array(
            [v if isinstance(v, ok) and (typ != pa.float64() or not isinstance(v, bool))
             else None for v in values], type=typ,
        )  # fmt: skip


def _array(values: Any, typ: pa.DataType) -> pa.Array:
    """One column as Arrow of ``typ``: Python values (SQLite rows) are converted; the COPY
    path's columns already are Arrow (times arrive as epoch microseconds and become
    timestamps here, without a copy)."""
    if isinstance(values, pa.Array):
        return values if values.type == typ else values.cast(typ)
    return pa.array(values, typ)


def _loads(text: str) -> Any:
    """A stored JSON column: orjson (~4x the standard library, which parsed every input and
    score in an export); NaN/Infinity tokens or integers beyond 64 bits it refuses go through
    the standard library, which reads them as it always did."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _documents(texts: Sequence[str | None]) -> list[str]:
    """The stored JSON texts of a batch, a missing or JSON-null object as ``{}``."""
    return [t if t and t != "null" else "{}" for t in texts]


def _joined_documents(texts: pa.Array) -> pa.Buffer:
    """:func:`_documents` joined by newlines, for an Arrow column (the COPY path): the same
    bytes, made in C++ without a Python string per row."""
    filled = pc.fill_null(texts, "{}")
    filled = pc.if_else(pc.is_in(filled, value_set=pa.array(["", "null"])), "{}", filled)
    one_list = pa.ListArray.from_arrays(pa.array([0, len(filled)], pa.int32()), filled)
    return pc.binary_join(one_list, "\n")[0].as_buffer()


def _json_columns(texts: Any, types: list[tuple[str, pa.DataType]]) -> list[pa.Array]:
    """One typed column per key of a stored JSON object column (inputs, scores); ``texts``
    are Python strings (SQLite rows) or an Arrow string column (the COPY path).

    Arrow's JSON reader parses the batch's objects as one newline-delimited document, in C++:
    picking every key out of a Python dict per row was half of an export's time
    (bench/README.md, "Export"). A batch it cannot read as typed (a value stored before a
    field's type was enforced, NaN) is read row by row as before, where ``_column`` keeps
    such values visible."""
    arrow = isinstance(texts, pa.Array)
    data = _joined_documents(texts) if arrow else "\n".join(_documents(texts)).encode()
    schema = pa.schema([pa.field(name, typ) for name, typ in types])
    table = _read_typed(data, schema)
    if table is not None and table.num_rows == len(texts) and table.schema.equals(schema):
        return [table.column(i).combine_chunks() for i in range(len(types))]
    parsed = [_loads(t) for t in _documents(texts.to_pylist() if arrow else texts)]
    return [_column([d.get(name) for d in parsed], typ) for name, typ in types]


def _read_typed(data: bytes, schema: pa.Schema) -> pa.Table | None:
    """The batch's documents read by Arrow as ``schema``; None when a value does not fit
    those types (mixed or odd values): the caller then reads that batch row by row, which
    writes the same file (tests/export checks the bytes)."""
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    reader = pa_json.ReadOptions(use_threads=False, block_size=len(data) + 1)
    try:
        return pa_json.read_json(pa.BufferReader(data), read_options=reader, parse_options=options)
    except MemoryError:  # Arrow's out-of-memory error is one too: never read as "odd values"
        raise
    except pa.ArrowException:  # a value Arrow cannot read or convert to the column's type
        return None


def _seconds(ms: Any) -> pa.Array:
    return pc.divide(pc.cast(_array(ms, pa.int64()), pa.float64()), 1000.0)


#: What each column of :func:`build_query` holds, in its order, as the COPY path parses it
#: (:data:`_COPY_TYPES`): "json" is an object's text, "time" epoch microseconds.
CASE_COLUMN_TYPES = (
    "str", "str", "json", "str", "float", "json", "int", "str", "str", "bool", "float", "str",
    "str", "str", "str", "str", "str", "str", "time", "int", "time", "time",
)  # fmt: skip
#: The same for :func:`build_reviews_query`.
REVIEW_COLUMN_TYPES = (
    "int", "str", "str", "str", "str", "str", "bool", "time", "time", "int", "time",
)  # fmt: skip


def _copy_type(kind: str) -> pa.DataType:
    return {"float": pa.float64(), "int": pa.int64(), "time": pa.int64(), "bool": pa.bool_()}.get(
        kind, pa.string()
    )


def _to_batch(columns: Sequence[Any], task: Task, schema: pa.Schema) -> pa.RecordBatch:
    """One batch of the query's columns (Python values or Arrow arrays) to the export's
    Arrow batch: converted in C, inputs and scores parsed a batch at a time."""
    (case_id, external_id, inputs, suggestion, confidence, scores, model_version, route,
     reason, audit_flag, label_probability, status, final_label, label_source, human_label,
     human_source, outcome, reviewer, review_time, review_ms, created_at, resolved_at) = (
        columns
    )  # fmt: skip
    n = len(case_id)
    input_types = [(str(f["name"]), _input_type(f["type"])) for f in task.fields]
    score_types = [(str(label), pa.float64()) for label in task.labels]
    string = pa.string()
    arrays: list[pa.Array] = [_array(case_id, string), _array(external_id, string)]
    arrays += _json_columns(inputs, input_types)
    suggested = _array(suggestion, string)
    arrays += [suggested, _array(confidence, pa.float64())]
    arrays += _json_columns(scores, score_types)
    created = _array(created_at, _ts_type())
    resolved = _array(resolved_at, _ts_type())
    human = _array(human_label, string)
    micros = pc.subtract(pc.cast(resolved, pa.int64()), pc.cast(created, pa.int64()))
    arrays += [
        _array(model_version, pa.int64()),
        _array(route, string),
        _array(reason, string),
        _array(audit_flag, pa.bool_()),
        _array(label_probability, pa.float64()),
        _array(status, string),
        _array(final_label, string),
        _array(label_source, string),
        human,
        _array(human_source, string),
        _array(outcome, string),
        pc.not_equal(human, suggested),  # null unless both exist, as /stats counts it
        _array(reviewer, string),
        _array(review_time, _ts_type()),
        _seconds(review_ms),
        pc.divide(pc.cast(micros, pa.float64()), 1_000_000.0),
        created,
        resolved,
    ]
    assert all(len(a) == n for a in arrays)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _reviews_batch(columns: Sequence[Any], schema: pa.Schema) -> pa.RecordBatch:
    (review_id, case_id, reviewer, label, comment, suggested, agreed, claimed_at, decided_at,
     duration_ms, retracted_at) = columns  # fmt: skip
    string = pa.string()
    arrays = [
        _array(review_id, pa.int64()),
        _array(case_id, string),
        _array(reviewer, string),
        _array(label, string),
        _array(comment, string),
        _array(suggested, string),
        _array(agreed, pa.bool_()),
        _array(claimed_at, _ts_type()),
        _array(decided_at, _ts_type()),
        _seconds(duration_ms),
        _array(retracted_at, _ts_type()),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


#: The largest block of COPY text Arrow's CSV reader parses as one piece (its block size is
#: a 32-bit number).
_CSV_PIECE_LIMIT = 1 << 30


def _copy_columns(
    session: Session, stmt: Select[Any], kinds: Sequence[str], size: int
) -> Generator[list[pa.Array]]:
    """PostgreSQL: the statement's rows as Arrow columns, ``size`` rows at a time, read with
    ``COPY (…) TO STDOUT (FORMAT csv)`` and parsed by Arrow's CSV reader.

    No Python object per value: the named cursor this replaces made one for every value
    (psycopg) and Arrow then converted them back, which cost more CPU than PostgreSQL's
    whole COPY (bench/README.md, "Export"). The COPY runs in the session's transaction (the
    same snapshot as the rest of the request). Its CSV tells a missing value (empty) from an
    empty string (``""``), writes booleans as t/f and floats in their shortest exact form,
    which the reader is told; each block holds whole rows, as PostgreSQL sends one row per
    message, so every block parses on its own. Closed early (a download cut short), psycopg
    cancels the COPY and the caller's transaction is rolled back, as on any failure.
    """
    connection = session.connection()
    compiled = stmt.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.construct_params()
    # psycopg merges parameters into a COPY client-side (the server takes none), and only
    # when there are some: every export query has at least its task id.
    assert params, "an export query always has parameters"
    raw = connection.connection.driver_connection
    assert raw is not None
    names = [f"c{i}" for i in range(len(kinds))]
    convert = pa_csv.ConvertOptions(
        column_types={name: _copy_type(kind) for name, kind in zip(names, kinds, strict=True)},
        true_values=["t"],
        false_values=["f"],
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    sql = f"COPY ({compiled}) TO STDOUT (FORMAT csv, ENCODING 'UTF8')"
    with raw.cursor() as cursor, cursor.copy(sql, params) as copy:
        rows = iter(copy)
        for block in _prefetched(lambda: _read_block(rows, size)):
            # A block of whole rows is parsed as one piece, so Arrow need not find where rows
            # end (a quote-aware pass, 40% of the parse); only a block too big for one piece
            # is split, and then a newline inside quotes must not end a row.
            one_piece = len(block) < _CSV_PIECE_LIMIT
            table = pa_csv.read_csv(
                pa.BufferReader(block),
                read_options=pa_csv.ReadOptions(
                    column_names=names,
                    use_threads=False,
                    block_size=len(block) + 1 if one_piece else _CSV_PIECE_LIMIT,
                ),
                parse_options=pa_csv.ParseOptions(newlines_in_values=not one_piece),
                convert_options=convert,
            )
            yield [column.combine_chunks() for column in table.columns]


def _read_block(rows: Iterator[Any], size: int) -> bytearray:
    """The COPY's next ``size`` rows (one psycopg buffer each) as one block. Each row is
    appended as it arrives, so its buffer is freed at once: holding a block's 10,000 buffers
    for one join tripled the reading's CPU (fresh memory, page faults, every block)."""
    block = bytearray()
    for row in islice(rows, size):
        block += row
    return block


def _row_columns(session: Session, stmt: Select[Any], size: int) -> Generator[list[Any]]:
    """SQLite: the statement's rows, ``size`` at a time, as columns of Python values, from
    a streaming result (constant memory)."""
    result = session.execute(stmt, execution_options={"stream_results": True, "yield_per": size})
    try:
        for partition in result.partitions(size):
            yield list(zip(*partition, strict=True))
    finally:
        result.close()


def _prefetched(read: Callable[[], bytearray]) -> Generator[bytearray]:
    """What ``read`` returns until it returns nothing, the next read done in a thread while
    the caller encodes this one: PostgreSQL produces the next rows (and psycopg reads them,
    without the GIL while it waits) as the writer works, on the other core. Serially the two
    took turns, each idle half the time (bench/README.md, "Export")."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="tandem-export-fetch") as pool:
        pending = pool.submit(read)
        try:
            while data := pending.result():
                pending = pool.submit(read)
                yield data
        finally:
            # Closed early (a download cut short): a read not started never runs, one in
            # flight is waited for by the pool's exit, before the COPY is ended.
            pending.cancel()


def _arrow_batches(
    session: Session,
    build: Callable[[Callable[[Any], Any]], Select[Any]],
    kinds: Sequence[str],
    convert: Callable[[Sequence[Any]], pa.RecordBatch],
    batch_rows: int | None,
) -> Generator[pa.RecordBatch]:
    """The rows of the query ``build`` makes (given how to render times) as Arrow batches of
    ``batch_rows`` rows (constant memory): through COPY on PostgreSQL, a streaming result on
    SQLite. Both give the same batches, so the files' bytes do not depend on the database."""
    size = batch_rows or BATCH_ROWS
    if _dialect(session) == "postgresql":
        parts: Generator[Sequence[Any]] = _copy_columns(session, build(_epoch_micros), kinds, size)
    else:
        parts = _row_columns(session, build(_raw_time), size)
    with closing(parts):
        for columns in parts:
            yield convert(columns)


def iter_batches(
    session: Session, task: Task, spec: ExportSpec, *, batch_rows: int | None = None
) -> Generator[pa.RecordBatch]:
    """Stream the export as Arrow batches (constant memory)."""
    schema = export_schema(task)
    dialect = _dialect(session)
    return _arrow_batches(
        session,
        lambda times: build_query(task, spec, dialect, times),
        CASE_COLUMN_TYPES,
        lambda columns: _to_batch(columns, task, schema),
        batch_rows,
    )


def iter_review_batches(
    session: Session, task: Task, spec: ExportSpec, *, batch_rows: int | None = None
) -> Generator[pa.RecordBatch]:
    """The reviews file's rows as Arrow batches (constant memory)."""
    schema = reviews_schema(task)
    dialect = _dialect(session)
    return _arrow_batches(
        session,
        lambda times: build_reviews_query(task, spec, dialect, times),
        REVIEW_COLUMN_TYPES,
        lambda columns: _reviews_batch(columns, schema),
        batch_rows,
    )


# --- writers -------------------------------------------------------------------------------


class _Spool:
    """File-like sink that hands out what was written since the last drain (HTTP chunks)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pos = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._chunks.append(chunk)
        self._pos += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        return None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


class _Writer(abc.ABC):
    def __init__(self, schema: pa.Schema, sink: _Spool) -> None:
        self.schema = schema
        self.sink = sink

    @abc.abstractmethod
    def write(self, batch: pa.RecordBatch) -> None:
        """Encode one batch into the sink."""

    def close(self) -> None:
        return None


def _format_times(batch: pa.RecordBatch) -> tuple[list[str], list[pa.Array]]:
    arrays = []
    for fld, col in zip(batch.schema, batch.columns, strict=True):
        if pa.types.is_timestamp(fld.type):
            col = _iso_times(col)
        arrays.append(col)
    return batch.schema.names, arrays


_ISO_WIDTH = len("2024-01-01T00:00:00.000000Z")
_US_PER_DAY = 86_400_000_000
#: Microseconds since 1970 of 0001-01-01 and of 10000-01-01: the years %Y writes in four
#: digits (those of Python's datetime too).
_FOUR_DIGIT_YEARS = (-62_135_596_800_000_000, 253_402_300_800_000_000)


def _iso_times(col: pa.Array) -> pa.Array:
    """``pc.strftime(col, _TS_FORMAT)`` for a UTC microsecond column, byte for byte, written
    as fixed-width digits by NumPy: Arrow formats each value through a calendar library,
    ~0.8 µs a value, which made the four time columns a third of a CSV export's CPU
    (bench/README.md, "Export"). Years outside 1–9999 go through ``pc.strftime``."""
    import numpy as np

    n = len(col)
    micros = pc.fill_null(col.cast(pa.int64()), 0).to_numpy()
    if n == 0 or micros.min() < _FOUR_DIGIT_YEARS[0] or micros.max() >= _FOUR_DIGIT_YEARS[1]:
        return pc.strftime(col, format=_TS_FORMAT)
    days, rest = np.divmod(micros, _US_PER_DAY)
    # Civil date from days since 1970 (H. Hinnant's algorithm, proleptic Gregorian).
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    seconds, micro = np.divmod(rest, 1_000_000)
    text = np.empty((n, _ISO_WIDTH), dtype=np.uint8)
    text[:] = np.frombuffer(b"0000-00-00T00:00:00.000000Z", dtype=np.uint8)
    for start, width, value in (
        (0, 4, year), (5, 2, month), (8, 2, day), (11, 2, seconds // 3600),
        (14, 2, seconds // 60 % 60), (17, 2, seconds % 60), (20, 6, micro),
    ):  # fmt: skip
        for k in range(start + width - 1, start - 1, -1):
            text[:, k] += (value % 10).astype(np.uint8)
            value = value // 10
    offsets = np.arange(0, (n + 1) * _ISO_WIDTH, _ISO_WIDTH, dtype=np.int32)
    out = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(text))
    return out if col.null_count == 0 else pc.if_else(col.is_valid(), out, None)


class _CsvWriter(_Writer):
    """RFC 4180 CSV via Arrow: header once; strings always quoted (so "" differs from a
    missing value, which is empty); true/false; shortest round-trip floats; ISO 'Z' times."""

    def __init__(self, schema: pa.Schema, sink: _Spool) -> None:
        super().__init__(schema, sink)
        fields = [
            pa.field(f.name, pa.string()) if pa.types.is_timestamp(f.type) else f for f in schema
        ]
        self.csv_schema = pa.schema(fields)
        self._writer = pa_csv.CSVWriter(
            sink, self.csv_schema, write_options=pa_csv.WriteOptions(quoting_style="needed")
        )

    def write(self, batch: pa.RecordBatch) -> None:
        _, arrays = _format_times(batch)
        self._writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=self.csv_schema))

    def close(self) -> None:
        self._writer.close()


class _JsonlWriter(_Writer):
    """One JSON object per line, keys sorted, compact separators, UTF-8, ISO 'Z' times."""

    def __init__(self, schema: pa.Schema, sink: _Spool) -> None:
        super().__init__(schema, sink)
        self._order = sorted(range(len(schema)), key=lambda i: schema.names[i])
        self._keys = [schema.names[i] for i in self._order]
        self._encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def write(self, batch: pa.RecordBatch) -> None:
        _, arrays = _format_times(batch)
        cols = [arrays[i].to_pylist() for i in self._order]
        keys, encode = self._keys, self._encode
        lines = [encode(dict(zip(keys, values, strict=True))) for values in zip(*cols, strict=True)]
        if lines:
            self.sink.write(("\n".join(lines) + "\n").encode("utf-8"))


class _ParquetWriter(_Writer):
    """Parquet, one row group per batch, zstd; no timestamps or host names in the metadata,
    so two writes of the same rows are byte-identical."""

    def __init__(self, schema: pa.Schema, sink: _Spool) -> None:
        super().__init__(schema, sink)
        self._writer = pq.ParquetWriter(
            sink, schema, compression="zstd", write_statistics=True, use_dictionary=True
        )

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch, row_group_size=max(batch.num_rows, 1))

    def close(self) -> None:
        self._writer.close()


WRITERS: dict[str, type[_Writer]] = {
    "csv": _CsvWriter,
    "jsonl": _JsonlWriter,
    "parquet": _ParquetWriter,
}


@dataclass
class ExportStats:
    """What was written: row count, byte count, SHA-256, time range and model versions (the
    last two for the cases file only)."""

    rows: int = 0
    byte_count: int = 0
    first_created_at: datetime | None = None
    last_created_at: datetime | None = None
    model_versions: set[int] = field(default_factory=set)
    _hash: Any = field(default_factory=hashlib.sha256)

    @property
    def sha256(self) -> str:
        return str(self._hash.hexdigest())

    def add_bytes(self, data: bytes) -> None:
        self._hash.update(data)
        self.byte_count += len(data)

    def add_batch(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.rows += batch.num_rows
        if "model_version" not in batch.schema.names:
            return
        created = batch.column("created_at")
        if self.first_created_at is None:
            self.first_created_at = created[0].as_py()
        self.last_created_at = created[batch.num_rows - 1].as_py()
        versions = pc.unique(batch.column("model_version").drop_null())
        self.model_versions.update(int(v) for v in versions.to_pylist())


def _encode(
    schema: pa.Schema, batches: Generator[pa.RecordBatch], fmt: str, stats: ExportStats
) -> Iterator[bytes]:
    spool = _Spool()
    writer = WRITERS[fmt](schema, spool)
    # Closed here, whatever happens: a failure's traceback would otherwise keep the batches
    # (and PostgreSQL's named cursor) alive until after the transaction has ended.
    with closing(batches):
        for batch in batches:
            writer.write(batch)
            stats.add_batch(batch)
            chunk = spool.drain()
            if chunk:
                stats.add_bytes(chunk)
                yield chunk
    writer.close()
    tail = spool.drain()
    if tail:
        stats.add_bytes(tail)
        yield tail


def stream_export(
    session: Session,
    task: Task,
    spec: ExportSpec,
    stats: ExportStats | None = None,
    *,
    batch_rows: int | None = None,
) -> Iterator[bytes]:
    """The export file as a sequence of byte chunks, one per batch (CSV and JSONL begin with
    the first batch; Parquet yields each row group as it is written, then the footer)."""
    stats = stats if stats is not None else ExportStats()
    batches = iter_batches(session, task, spec, batch_rows=batch_rows)
    yield from _encode(export_schema(task), batches, spec.format, stats)


def stream_reviews(
    session: Session,
    task: Task,
    spec: ExportSpec,
    stats: ExportStats | None = None,
    *,
    batch_rows: int | None = None,
) -> Iterator[bytes]:
    """The reviews file of the same spec, in the same format, as byte chunks."""
    stats = stats if stats is not None else ExportStats()
    batches = iter_review_batches(session, task, spec, batch_rows=batch_rows)
    yield from _encode(reviews_schema(task), batches, spec.format, stats)


def write_export(
    session: Session, task: Task, spec: ExportSpec, out: BinaryIO, **kwargs: Any
) -> ExportStats:
    stats = ExportStats()
    for chunk in stream_export(session, task, spec, stats, **kwargs):
        out.write(chunk)
    return stats


def write_reviews(
    session: Session, task: Task, spec: ExportSpec, out: BinaryIO, **kwargs: Any
) -> ExportStats:
    stats = ExportStats()
    for chunk in stream_reviews(session, task, spec, stats, **kwargs):
        out.write(chunk)
    return stats


def build_manifest(
    task: Task,
    spec: ExportSpec,
    stats: ExportStats,
    *,
    file_name: str,
    creator: str | None,
    created_at: datetime,
    export_id: str | None = None,
    reviews: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Provenance of one export file: enough to say where every row came from and to check
    the file is the one that was made (SHA-256). ``labels`` is the task's label set, so a
    class absent from the filtered rows is still known; ``reviews`` describes the snapshot's
    reviews file (:func:`reviews_manifest`), null when none was asked for."""
    return {
        "export_id": export_id,
        "task": task.name,
        "format": spec.format,
        "file": file_name,
        "bytes": stats.byte_count,
        "sha256": stats.sha256,
        "row_count": stats.rows,
        "filters": spec.filters.to_dict(),
        "reviewer_identity": spec.identity,
        "labels": list(task.labels),
        "schema": schema_description(export_schema(task)),
        "time_range": {
            "first_created_at": iso(stats.first_created_at),
            "last_created_at": iso(stats.last_created_at),
        },
        "model_versions": sorted(stats.model_versions),
        "creator": creator,
        "created_at": iso(created_at),
        "ordering": ["created_at", "id"],
        "export_schema_version": SCHEMA_VERSION,
        "reviews": reviews,
    }


def reviews_manifest(task: Task, stats: ExportStats, *, file_name: str) -> dict[str, Any]:
    """The manifest's entry for a reviews file: its own size, checksum, rows and schema."""
    return {
        "file": file_name,
        "bytes": stats.byte_count,
        "sha256": stats.sha256,
        "row_count": stats.rows,
        "schema": schema_description(reviews_schema(task)),
        "ordering": ["case created_at", "case id", "review id"],
    }


def download_name(task: Task, fmt: str, stamp: datetime | None = None, kind: str = "export") -> str:
    when = (stamp or utcnow()).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return _FILENAME_SAFE.sub("_", f"{task.name}-{kind}-{when}.{fmt}")


def record_stream_failed(
    session: Session,
    task_id: int,
    fmt: str,
    error: BaseException,
    actor: Actor,
    *,
    request_id: str | None = None,
) -> None:
    """The ``export.failed`` audit event of a direct export that could not be written."""
    audit.record(
        session,
        "export.failed",
        actor,
        task_id=task_id,
        details={"channel": "api", "format": fmt, "error": type(error).__name__},
        request_id=request_id,
    )


def record_streamed(
    session: Session,
    task: Task,
    spec: ExportSpec,
    actor: Actor,
    *,
    channel: str,
    request_id: str | None = None,
    row_count: int | None = None,
    extra: dict[str, Any] | None = None,
) -> int:
    """The ``export.created`` audit event of a direct export (API stream or CLI). Returns the
    row count it recorded (counted now when not given)."""
    rows = count_rows(session, task, spec) if row_count is None else row_count
    audit.record(
        session,
        "export.created",
        actor,
        task_id=task.id,
        details={
            "channel": channel,
            "format": spec.format,
            "filters": spec.filters.to_dict(),
            "reviewer_identity": spec.identity,
            "row_count": rows,
            **(extra or {}),
        },
        request_id=request_id,
    )
    return rows


# --- stored snapshots (background exports) ---------------------------------------------------


def export_job_id(export_id: str) -> str:
    return f"export-{export_id}"


def request_snapshot(
    session: Session, task: Task, spec: ExportSpec, actor: Actor, *, request_id: str | None = None
) -> Export:
    """Record a snapshot request and queue the job that makes it (after commit)."""
    export = Export(
        task_id=task.id,
        format=spec.format,
        filters={
            **spec.filters.to_dict(),
            **({"identity": "real"} if spec.identity == "real" else {}),
            **({"reviews": True} if spec.reviews else {}),
        },
        state="queued",
        created_by=actor.label,
    )
    session.add(export)
    session.flush()
    export.job_id = export_job_id(export.id)
    jobs.queue_job(
        session,
        Job(id=export.job_id, kind="export", task_id=task.id),
        EXPORT_JOB,
        queue=queues.EXPORTS,
        actor=actor,
        event="export.requested",
        details={
            "export_id": export.id,
            "format": spec.format,
            "filters": spec.filters.to_dict(),
            "reviewer_identity": spec.identity,
            "job_id": export.job_id,
            **({"reviews": True} if spec.reviews else {}),
        },
        request_id=request_id,
        export_id=export.id,
    )
    return export


#: Keys of ``Export.filters`` that are request options, not filters.
_SNAPSHOT_OPTIONS = ("identity", "reviews")


def snapshot_spec(export: Export) -> ExportSpec:
    stored = dict(export.filters or {})
    identity = "real" if stored.pop("identity", None) == "real" else "pseudonym"
    reviews = stored.pop("reviews", None) is True
    return ExportSpec(
        format=export.format, filters=parse_filters(stored), identity=identity, reviews=reviews
    )


def snapshot_dir(export_dir: Path, export_id: str) -> Path:
    return export_dir / export_id


def data_file_name(fmt: str) -> str:
    return f"data.{fmt}"


def reviews_file_name(fmt: str) -> str:
    return f"reviews.{fmt}"


def _write_synced(path: Path, write: Any) -> ExportStats:
    with open(path, "wb") as out:
        stats: ExportStats = write(out)
        out.flush()
        os.fsync(out.fileno())
    return stats


def write_snapshot(
    session: Session, export: Export, task: Task, export_dir: Path, **kwargs: Any
) -> dict[str, Any]:
    """Write the file (and the reviews file when asked for) + ``manifest.json`` into a
    temporary folder, then rename it into place in one step. On any failure the temporary
    folder is removed and nothing is left behind. Both files are read in the caller's one
    transaction, so they describe the same moment. Returns the manifest; the caller marks the
    Export row done in its own commit."""
    spec = snapshot_spec(export)
    export_dir.mkdir(parents=True, exist_ok=True)
    final = snapshot_dir(export_dir, export.id)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{export.id}-", dir=export_dir))
    try:
        name = data_file_name(spec.format)
        stats = _write_synced(tmp / name, lambda out: write_export(session, task, spec, out,
                                                                   **kwargs))  # fmt: skip
        reviews = None
        if spec.reviews:
            reviews_name = reviews_file_name(spec.format)
            written = _write_synced(tmp / reviews_name, lambda out: write_reviews(
                session, task, spec, out, **kwargs))  # fmt: skip
            reviews = reviews_manifest(task, written, file_name=reviews_name)
        manifest = build_manifest(
            task,
            spec,
            stats,
            file_name=name,
            creator=export.created_by,
            created_at=export.created_at,
            export_id=export.id,
            reviews=reviews,
        )
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if final.exists():  # left by an attempt that died before its commit: never marked done
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def remove_snapshot(export_dir: Path, export_id: str) -> None:
    shutil.rmtree(snapshot_dir(export_dir, export_id), ignore_errors=True)


def parse_snapshot_file(value: str | None) -> str:
    """Which file of a snapshot to download: ``data`` (default) or ``reviews``."""
    if value in (None, ""):
        return "data"
    if value not in SNAPSHOT_FILES:
        raise ValidationFailed(
            "Invalid fields: file", {"file": ["Must be one of: " + ", ".join(SNAPSHOT_FILES)]}
        )
    return str(value)


def snapshot_file(export_dir: Path, export: Export, file: str = "data") -> tuple[Path, str | None]:
    """The stored file of a finished snapshot and its SHA-256 (from the manifest)."""
    if export.state != "done" or not export.path:
        raise NotFound("this export has no stored file (yet)", {"state": export.state})
    if file == "reviews":
        entry = (export.manifest or {}).get("reviews")
        if not entry:
            raise NotFound(
                'this export has no reviews file (ask for one with "reviews": true)',
                {"export_id": export.id, "file": file},
            )
        path, sha = export_dir / export.id / str(entry["file"]), entry.get("sha256")
    else:
        path, sha = export_dir / export.path, export.sha256
    if not path.is_file():
        raise NotFound("the stored export file is missing", {"export_id": export.id})
    return path, sha


def get_export(session: Session, export_id: str, actor: Actor) -> tuple[Export, Task]:
    export = session.get(Export, export_id)
    if export is None:
        raise NotFound("export not found", {"export_id": export_id})
    task = session.get(Task, export.task_id)
    if task is None or not actor.may_access(task.name):
        raise Forbidden("not allowed to read this export", {"export_id": export_id})
    return export, task


def list_exports(session: Session, task: Task, *, limit: int = 50) -> list[Export]:
    stmt = (
        select(Export)
        .where(Export.task_id == task.id)
        .order_by(Export.created_at.desc(), Export.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


def export_view(export: Export, task: Task) -> dict[str, Any]:
    """What the API shows of a stored export (the manifest once done)."""
    return {
        "export_id": export.id,
        "task": task.name,
        "format": export.format,
        "filters": {k: v for k, v in (export.filters or {}).items() if k not in _SNAPSHOT_OPTIONS},
        "reviewer_identity": (export.filters or {}).get("identity", "pseudonym"),
        "reviews": (export.filters or {}).get("reviews") is True,
        "state": export.state,
        "job_id": export.job_id,
        "row_count": export.row_count,
        "sha256": export.sha256,
        "manifest": export.manifest,
        "error": export.error,
        "created_by": export.created_by,
        "created_at": iso(export.created_at),
        "finished_at": iso(export.finished_at),
        "download_url": f"/api/v1/exports/{export.id}/download" if export.state == "done" else None,
        "reviews_download_url": (
            f"/api/v1/exports/{export.id}/download?file=reviews"
            if export.state == "done" and (export.manifest or {}).get("reviews")
            else None
        ),
    }


def export_to_file(
    session: Session, task: Task, spec: ExportSpec, out: Path, actor: Actor
) -> dict[str, Any]:
    """The CLI export: the same bytes as the API, written to a temporary file beside ``out``
    and renamed over it only when complete, plus the audit event. Returns the manifest; the
    caller commits (the audit event) after the file is in place."""
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            stats = write_export(session, task, spec, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    manifest = build_manifest(
        task, spec, stats, file_name=out.name, creator=actor.label, created_at=utcnow()
    )
    record_streamed(
        session,
        task,
        spec,
        actor,
        channel="cli",
        row_count=stats.rows,
        extra={"sha256": stats.sha256, "file": str(out)},
    )
    return manifest


def export_to_stream(
    session: Session, task: Task, spec: ExportSpec, out: BinaryIO, actor: Actor
) -> dict[str, Any]:
    """The CLI export to standard output (``--out -``): the same bytes as the API, written
    chunk by chunk as they are encoded (binary, nothing else on the stream), plus the audit
    event. A failure part way leaves a short stream and raises (non-zero exit), as a cut
    download does. Returns the manifest; the caller commits the audit event."""
    stats = write_export(session, task, spec, out)
    out.flush()
    manifest = build_manifest(
        task, spec, stats, file_name=STDOUT_NAME, creator=actor.label, created_at=utcnow()
    )
    record_streamed(
        session,
        task,
        spec,
        actor,
        channel="cli",
        row_count=stats.rows,
        extra={"sha256": stats.sha256, "file": STDOUT_NAME},
    )
    return manifest
