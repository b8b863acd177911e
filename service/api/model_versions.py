"""Model versions, training on demand, promotion/rollback and background job state (docs/api.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from service.api.common import current_actor, request_id, require_roles, roles_doc
from service.errors import NotFound
from service.models import MODEL_STATUSES, ModelVersion
from service.schemas.common import ApiErrorSchema, Timestamp
from service.schemas.tasks import TaskSchema
from service.services import automation, jobs, training, training_run
from service.services import tasks as task_service
from service.uow import unit_of_work

MAX_VERSION = 2**31 - 1

blp = Blueprint(
    "models", __name__, url_prefix="/api/v1", description="Model versions, training and jobs"
)


class RevokedSchema(Schema):
    reason = fields.String(metadata={"description": "fallback, or the policy edit"})
    at = Timestamp()


# metrics, certification, training_snapshot and timings are the training and certification
# records as stored: their keys depend on the model family and the certification run
# (docs/learning.md, docs/policy.md), so they are documented as free-form objects.
class ModelVersionSchema(Schema):
    version = fields.Integer(required=True)
    status = fields.String(required=True, validate=validate.OneOf(MODEL_STATUSES))
    family = fields.String(allow_none=True)
    threshold = fields.Float(allow_none=True)
    error_bound = fields.Float(allow_none=True)
    coverage = fields.Float(allow_none=True)
    metrics = fields.Dict(metadata={"description": "held-out evaluation of the version"})
    certification = fields.Dict(metadata={"description": "the stored certification record"})
    revoked = fields.Nested(
        RevokedSchema,
        allow_none=True,
        metadata={
            "description": "Why and when this version's certification stopped counting (a "
            "fallback or a policy edit): it is never deployed again (docs/policy.md)."
        },
    )
    training_snapshot = fields.Dict(metadata={"description": "what the version was trained on"})
    timings = fields.Dict(metadata={"description": "seconds spent per training stage"})
    parent_version = fields.Integer(allow_none=True)
    created_at = Timestamp(allow_none=True)
    trained_at = Timestamp(allow_none=True)
    activated_at = Timestamp(allow_none=True)


class ModelListSchema(Schema):
    models = fields.List(fields.Nested(ModelVersionSchema), required=True)


JOB_STATES = ("queued", "started", "finished", "failed")


class JobIdSchema(Schema):
    job_id = fields.String(required=True)
    state = fields.String(validate=validate.OneOf(JOB_STATES))


class JobSchema(Schema):
    id = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(("train", "export")))
    task = fields.String(allow_none=True)
    state = fields.String(required=True, validate=validate.OneOf(JOB_STATES))
    # Progress and result are what the job kind reports (training, export...): free-form.
    progress = fields.Dict(metadata={"description": "the job's stage and counters"})
    result = fields.Dict(allow_none=True, metadata={"description": "what the job produced"})
    error = fields.String(allow_none=True)
    attempts = fields.Integer()
    created_by = fields.String(allow_none=True)
    created_at = Timestamp(allow_none=True)
    started_at = Timestamp(allow_none=True)
    finished_at = Timestamp(allow_none=True)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def model_view(version: ModelVersion, parent_version: int | None) -> dict[str, Any]:
    return {
        "version": version.version,
        "status": version.status,
        "family": version.family,
        "threshold": version.threshold,
        "error_bound": version.error_bound,
        "coverage": version.coverage,
        "metrics": version.metrics or {},
        "certification": version.certification or {},
        "revoked": (version.certification or {}).get("revoked"),
        "training_snapshot": version.training_snapshot or {},
        "timings": version.timings or {},
        "parent_version": parent_version,
        "created_at": _iso(version.created_at),
        "trained_at": _iso(version.trained_at),
        "activated_at": _iso(version.activated_at),
    }


@blp.route("/tasks/<string:task>/models", methods=["GET"])
@blp.doc(**roles_doc("analyst"))
@blp.response(200, ModelListSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@require_roles("analyst")
def list_models(task: str) -> dict[str, Any]:
    """Versions, newest first, with metrics, certified threshold, error bound and status."""
    with unit_of_work() as session:
        row = task_service.get_task(session, task, current_actor())
        return {"models": [model_view(v, p) for v, p in automation.versions(session, row)]}


@blp.route("/tasks/<string:task>/models/train", methods=["POST"])
@blp.doc(**roles_doc("admin"))
@blp.response(202, JobIdSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@require_roles("admin")
def train(task: str) -> dict[str, Any]:
    """Queue training now. One job per task: a queued or running job is returned as is."""
    with unit_of_work() as session:
        actor = current_actor()
        row = task_service.get_task(session, task, actor)
        job = training.request_training(
            session, row, actor, reason="on_demand", request_id=request_id()
        )
        return {"job_id": job.id, "state": job.state}


@blp.route("/tasks/<string:task>/models/<int:version>/activate", methods=["POST"])
@blp.doc(**roles_doc("admin"))
@blp.response(200, TaskSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(409, schema=ApiErrorSchema, description="The version cannot be activated")
@require_roles("admin")
def activate(task: str, version: int) -> dict[str, Any]:
    """Promote or roll back to any trained version; its stored certification goes live with
    it only while valid (not revoked by a fallback or a policy edit): otherwise the version
    only suggests. The answer's ``automation`` says which happened and why."""
    with unit_of_work() as session:
        actor = current_actor()
        row = task_service.get_task(session, task, actor)
        if version > MAX_VERSION:  # 32-bit in the database: simply no such version
            raise NotFound(f"no model version {version}", {"version": version})
        locked = training_run.lock_task(session, row.id)
        assert locked is not None
        automation.activate(session, row, version, actor, request_id=request_id())
        session.flush()
        return task_service.task_status(session, row, actor)


@blp.route("/jobs/<string:job_id>", methods=["GET"])
@blp.doc(**roles_doc("analyst"))
@blp.response(200, JobSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@require_roles("analyst")
def get_job(job_id: str) -> dict[str, Any]:
    """A background job's state, progress, result or error."""
    with unit_of_work() as session:
        return jobs.job_view(session, job_id, current_actor())
