"""Feedback export for analysts (docs/export.md): streamed downloads and stored snapshots."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, request, send_file, stream_with_context
from flask_smorest import Blueprint

from service.api.common import current_actor, json_body, request_id, require_roles, roles_doc
from service.db import SessionFactory, db_session, read_only, utcnow
from service.errors import ExportFailed, ValidationFailed
from service.models import CASE_STATUSES, LABEL_SOURCES, REASONS, ROUTES, Task
from service.schemas.common import ApiErrorSchema
from service.schemas.export import (
    ExportListSchema,
    ExportRowSchema,
    ExportViewSchema,
    SnapshotQueuedSchema,
    SnapshotRequestSchema,
)
from service.services import audit
from service.services import export as export_service
from service.services.tasks import get_task
from service.uow import unit_of_work

blp = Blueprint(
    "export", __name__, url_prefix="/api/v1", description="Feedback datasets for analysts"
)

ROLES = ("analyst",)
log = logging.getLogger(__name__)


def _many(item: dict[str, Any]) -> dict[str, Any]:
    """A multi-valued filter: repeat the parameter (``status=resolved&status=corrected``)."""
    return {"type": "array", "items": item}


_FILTER_PARAMS: list[dict[str, Any]] = [
    {"name": "format", "in": "query", "required": True,
     "schema": {"type": "string", "enum": list(export_service.FORMATS)}},
    {"name": "from", "in": "query", "description": "created_at >= (ISO 8601, UTC if no offset)",
     "schema": {"type": "string", "format": "date-time"}},
    {"name": "to", "in": "query", "description": "created_at < (ISO 8601)",
     "schema": {"type": "string", "format": "date-time"}},
    {"name": "label_source", "in": "query",
     "schema": _many({"type": "string", "enum": list(LABEL_SOURCES)})},
    {"name": "route", "in": "query", "schema": _many({"type": "string", "enum": list(ROUTES)})},
    {"name": "reason", "in": "query", "schema": _many({"type": "string", "enum": list(REASONS)})},
    {"name": "status", "in": "query",
     "schema": _many({"type": "string", "enum": list(CASE_STATUSES)})},
    {"name": "final_label", "in": "query", "description": "one of the task's labels",
     "schema": _many({"type": "string"})},
    {"name": "audit", "in": "query", "schema": {"type": "boolean"}},
    {"name": "agreement", "in": "query", "description": "human label vs model suggestion",
     "schema": {"type": "string", "enum": ["agree", "disagree"]}},
    {"name": "model_version", "in": "query", "schema": _many({"type": "integer", "minimum": 1})},
    {"name": "reviewer", "in": "query", "description": "reviewer pseudonym",
     "schema": _many({"type": "string"})},
    {"name": "identity", "in": "query",
     "description": "`real` shows reviewer e-mail addresses (admins only)",
     "schema": {"type": "string", "enum": ["pseudonym", "real"], "default": "pseudonym"}},
]  # fmt: skip

_ATTACHMENT = {
    "description": 'attachment; filename="<task>-export-<UTC time>.<format>"',
    "schema": {"type": "string"},
}
#: What the export endpoints send, by format: a JSON Lines line is one ExportRow; a CSV file
#: has a header row of the same column names; Parquet has them as typed columns.
_EXPORT_CONTENT = {
    "text/csv": {
        "schema": {
            "type": "string",
            "description": "UTF-8, RFC 4180: a header row, then one row per case; columns "
            "as in ExportRow",
        }
    },
    "application/x-ndjson": {"schema": ExportRowSchema},
    "application/vnd.apache.parquet": {
        "schema": {
            "type": "string",
            "format": "binary",
            "description": "typed columns as in ExportRow (docs/export.md)",
        }
    },
}


def _query_params() -> dict[str, Any]:
    """The query string; a multi-valued filter as the list of its repeated values."""
    repeated = sorted(
        k
        for k in request.args
        if len(request.args.getlist(k)) > 1 and k not in export_service.MULTI_VALUED
    )
    if repeated:
        raise ValidationFailed(
            "Each export parameter may be given once: " + ", ".join(repeated),
            {k: ["Given more than once."] for k in repeated},
        )
    return {
        k: request.args.getlist(k) if k in export_service.MULTI_VALUED else request.args[k]
        for k in request.args
    }


@blp.route("/tasks/<string:task>/export", methods=["GET"])
@blp.doc(
    **roles_doc(*ROLES),
    parameters=_FILTER_PARAMS,
    responses={
        "200": {
            "description": "The dataset, streamed (CSV, JSON Lines: one ExportRow per line, or "
            "Parquet), one row per case",
            "headers": {"Content-Disposition": _ATTACHMENT},
            "content": _EXPORT_CONTENT,
        }
    },
)
@blp.alt_response(403, schema=ApiErrorSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(422, schema=ApiErrorSchema, description="Unknown filter or bad value")
@require_roles(*ROLES)
def stream_export(task: str) -> Response:
    """Stream the task's feedback as a dataset, one row per case (see docs/export.md)."""
    params = _query_params()
    actor = current_actor()
    # The audit event is committed before the first byte is sent.
    with unit_of_work() as session:
        row = get_task(session, task, actor)
        spec = export_service.parse_request(params, actor, session, task=row)
        export_service.record_streamed(
            session, row, spec, actor, channel="api", request_id=request_id()
        )
        task_id = row.id
        filename = export_service.download_name(row, spec.format, utcnow())
    db_session.remove()

    def generate() -> Iterator[bytes]:
        # A session of its own, not the request's: Flask tears the request down (removing the
        # request's session) when the view returns, before the body is sent; on PostgreSQL
        # that ended the transaction holding the export's server-side cursor mid-download.
        session = read_only(SessionFactory())
        failure: Exception | None = None
        try:
            task_row = session.get(Task, task_id)
            assert task_row is not None
            yield from export_service.stream_export(session, task_row, spec)
        except Exception as exc:
            failure = exc
            raise
        finally:
            session.rollback()
            session.close()
            if failure is not None:
                # Never a silent truncated 200: logged, audited, and (before the first byte)
                # an error status; after it the transfer is cut short and the client sees so.
                _record_failure(task_id, actor, spec.format, failure)

    chunks = generate()
    try:
        first = next(chunks)  # the first batch is written before any header is sent
    except StopIteration:
        first = b""
    except Exception as exc:
        raise ExportFailed(
            "The export could not be written; the failure is recorded in the audit log "
            "(export.failed). See docs/export.md, 'When an export fails'.",
            {"error": type(exc).__name__},
        ) from exc

    def rest() -> Iterator[bytes]:
        yield first
        yield from chunks

    response = Response(
        stream_with_context(rest()), content_type=export_service.CONTENT_TYPES[spec.format]
    )
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # let proxies pass chunks through at once
    return response


def _record_failure(task_id: int, actor: Any, fmt: str, exc: Exception) -> None:
    log.error("export of task %s (%s) failed: %s", task_id, fmt, type(exc).__name__, exc_info=exc)
    try:
        with unit_of_work() as session:
            export_service.record_stream_failed(
                session, task_id, fmt, exc, actor, request_id=request_id()
            )
    except Exception:  # the database itself may be what failed: the log line stands
        log.warning("export.failed could not be recorded", exc_info=False)
        db_session.remove()


@blp.route("/tasks/<string:task>/exports", methods=["POST"])
@blp.doc(
    **roles_doc(*ROLES),
    requestBody={
        "required": True,
        "content": {"application/json": {"schema": SnapshotRequestSchema}},
    },
)
@blp.alt_response(202, schema=SnapshotQueuedSchema, description="Queued")
@blp.alt_response(403, schema=ApiErrorSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(422, schema=ApiErrorSchema)
@require_roles(*ROLES)
def create_snapshot(task: str) -> tuple[dict[str, Any], int]:
    """Make a stored snapshot with its manifest in the background (exports queue)."""
    body = json_body()
    if not isinstance(body, dict):
        raise ValidationFailed("The body must be a JSON object", {"_schema": ["Not an object."]})
    unknown = sorted(set(body) - {"format", "filters", "identity", "reviews"})
    filters = body.get("filters") or {}
    if unknown or not isinstance(filters, dict):
        details = {k: ["Unknown field."] for k in unknown}
        if not isinstance(filters, dict):
            details["filters"] = ["Must be an object."]
        raise ValidationFailed("Invalid fields: " + ", ".join(sorted(details)), details)
    actor = current_actor()
    with unit_of_work() as session:
        row = get_task(session, task, actor)
        params = {**filters, "format": body.get("format"), "identity": body.get("identity")}
        spec = export_service.parse_request(
            params, actor, session, task=row, reviews=body.get("reviews")
        )
        export = export_service.request_snapshot(session, row, spec, actor, request_id=request_id())
        view = export_service.export_view(export, row)
    return {"export_id": view["export_id"], "job_id": view["job_id"], "state": "queued"}, 202


@blp.route("/tasks/<string:task>/exports", methods=["GET"])
@blp.doc(
    **roles_doc(*ROLES),
    parameters=[
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "default": 50, "minimum": 1, "maximum": 500},
        }
    ],
)
@blp.alt_response(200, schema=ExportListSchema, description="Newest first")
@blp.alt_response(403, schema=ApiErrorSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@require_roles(*ROLES)
def list_snapshots(task: str) -> dict[str, Any]:
    """The task's stored snapshots, newest first."""
    raw = request.args.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise ValidationFailed("Invalid fields: limit", {"limit": ["1 to 500."]})
    with unit_of_work() as session:
        row = get_task(session, task, current_actor())
        rows = export_service.list_exports(session, row, limit=int(raw))
        return {"exports": [export_service.export_view(e, row) for e in rows]}


@blp.route("/exports/<string:export_id>", methods=["GET"])
@blp.doc(**roles_doc(*ROLES))
@blp.alt_response(200, schema=ExportViewSchema, description="State, manifest, download")
@blp.alt_response(403, schema=ApiErrorSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@require_roles(*ROLES)
def get_snapshot(export_id: str) -> dict[str, Any]:
    """A stored export: its state, and once done its manifest and download URL."""
    with unit_of_work() as session:
        export, task = export_service.get_export(session, export_id, current_actor())
        return export_service.export_view(export, task)


@blp.route("/exports/<string:export_id>/download", methods=["GET"])
@blp.doc(
    **roles_doc(*ROLES),
    parameters=[
        {
            "name": "file",
            "in": "query",
            "description": "`reviews`: the reviews file",
            "schema": {
                "type": "string",
                "enum": list(export_service.SNAPSHOT_FILES),
                "default": "data",
            },
        }
    ],
    responses={
        "200": {
            "description": "The stored file (a 304 answers a matching If-None-Match)",
            "headers": {
                "Content-Disposition": _ATTACHMENT,
                "ETag": {"description": "the file's SHA-256", "schema": {"type": "string"}},
                "X-Content-SHA256": {
                    "description": "the file's SHA-256 (hex), as in the manifest",
                    "schema": {"type": "string"},
                },
            },
            "content": _EXPORT_CONTENT,
        },
        "304": {"description": "Not modified (If-None-Match matched the ETag)"},
    },
)
@blp.alt_response(403, schema=ApiErrorSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@require_roles(*ROLES)
def download_snapshot(export_id: str) -> Response:
    """A stored file of a finished export (the data, or with ``file=reviews`` the reviews
    file), streamed from disk with its SHA-256 in a header."""
    actor = current_actor()
    export_dir = current_app.config["TANDEM"].export_dir
    which = export_service.parse_snapshot_file(request.args.get("file"))
    with unit_of_work() as session:
        export, task = export_service.get_export(session, export_id, actor)
        path, sha = export_service.snapshot_file(export_dir, export, which)
        audit.record(
            session,
            "export.downloaded",
            actor,
            task_id=task.id,
            details={
                "export_id": export.id,
                "sha256": sha,
                **({"file": which} if which != "data" else {}),
            },
            request_id=request_id(),
        )
        kind = "export" if which == "data" else which
        name = export_service.download_name(task, export.format, export.created_at, kind)
        fmt = export.format
    response = send_file(
        path,
        mimetype=export_service.CONTENT_TYPES[fmt].split(";")[0],
        as_attachment=True,
        download_name=name,
        etag=sha or True,
        conditional=True,
        max_age=0,
    )
    response.headers["Content-Type"] = export_service.CONTENT_TYPES[fmt]
    response.headers["X-Content-SHA256"] = sha or ""
    return response
