"""Reading a case and reporting its late ground truth."""

from __future__ import annotations

from typing import Any

from flask import request
from flask_smorest import Blueprint

from service.api.common import current_actor, json_body, request_id, require_roles, roles_doc
from service.schemas.cases import (
    CaseDetailSchema,
    CaseListSchema,
    CaseLookupArgsSchema,
    CaseRepairSchema,
    OutcomeRequestSchema,
)
from service.schemas.common import ApiErrorSchema, load
from service.schemas.review import BlindCaseSchema
from service.services import cases as case_service
from service.services.tasks import get_task
from service.uow import unit_of_work

blp = Blueprint("cases", __name__, url_prefix="/api/v1", description="Cases and outcomes")


@blp.route("/cases/<string:case_id>", methods=["GET"])
@blp.doc(
    **roles_doc("app", "reviewer", "analyst"),
    responses={
        "200": {
            "description": "CaseDetail for applications, analysts and admins; BlindCase for "
            "reviewers",
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/CaseDetail"},
                            {"$ref": "#/components/schemas/BlindCase"},
                        ]
                    }
                }
            },
        }
    },
)
@blp.alt_response(404, schema=ApiErrorSchema)
@require_roles("app", "reviewer", "analyst")
def get_case(case_id: str) -> dict[str, Any]:
    """The case, with its final label once resolved and its reviews. Applications are never
    told whether a case was drawn for audit; reviewers get the blind view (their own
    decisions, no model suggestion); analysts and admins read everything, audit flag included.
    """
    with unit_of_work() as session:
        actor = current_actor()
        case = case_service.get_case(session, case_id, actor)
        view = case_service.case_detail_for(session, case, actor)
        # Dumped here, not by a response decorator: one schema for every role would cut the
        # reviewer's blind view down to the fields it shares with CaseDetail.
        schema = BlindCaseSchema() if actor.role == "reviewer" else CaseDetailSchema()
        result: dict[str, Any] = schema.dump(view)
        return result


LOOKUP_PARAMS = [
    {
        "in": "query",
        "name": "external_id",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": 200},
        "description": "the external_id the cases were sent with",
    },
    {
        "in": "query",
        "name": "limit",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        "description": "at most this many cases, newest first",
    },
]


@blp.route("/tasks/<string:task>/cases", methods=["GET"])
@blp.doc(**roles_doc("app", "analyst"), parameters=LOOKUP_PARAMS)
@blp.response(200, CaseListSchema)
@blp.alt_response(403, schema=ApiErrorSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(422, schema=ApiErrorSchema, description="Missing external_id, bad limit")
@require_roles("app", "analyst")
def find_cases(task: str) -> dict[str, Any]:
    """The task's cases sent with an ``external_id``, newest first (external ids are not
    unique: every case carrying it is listed). Each case as ``GET /cases/{id}`` shows it to
    the caller: applications never see the audit flag."""
    with unit_of_work() as session:
        actor = current_actor()
        row = get_task(session, task, actor)  # scope before validation
        args = load(CaseLookupArgsSchema(), request.args.to_dict())
        found, truncated = case_service.find_by_external_id(
            session, row, args["external_id"], limit=args["limit"]
        )
        return {
            "cases": [case_service.case_detail_for(session, case, actor) for case in found],
            "truncated": truncated,
        }


@blp.route("/cases/<string:case_id>/outcome", methods=["POST"])
@blp.doc(
    **roles_doc("app"),
    requestBody={
        "required": True,
        "content": {"application/json": {"schema": OutcomeRequestSchema}},
    },
)
@blp.response(200, CaseDetailSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(
    409, schema=ApiErrorSchema, description="A different outcome was already recorded"
)
@blp.alt_response(422, schema=ApiErrorSchema)
@require_roles("app")
def post_outcome(case_id: str) -> dict[str, Any]:
    """Late ground truth from the application (a label source of its own)."""
    with unit_of_work() as session:
        case_service.get_case(session, case_id, current_actor())  # scope before validation
        data = load(OutcomeRequestSchema(), json_body())
        case = case_service.record_outcome(
            session, case_id, data["label"], current_actor(), request_id=request_id()
        )
        return case_service.case_detail_for(session, case, current_actor())


@blp.route("/cases/<string:case_id>/repair", methods=["POST"])
@blp.doc(
    **roles_doc(),
    requestBody={"required": True, "content": {"application/json": {"schema": CaseRepairSchema}}},
)
@blp.response(200, CaseDetailSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(422, schema=ApiErrorSchema)
@require_roles()
def repair_case(case_id: str) -> dict[str, Any]:
    """Admins: replace or redact input fields of a stored case (audited as case.repaired)."""
    with unit_of_work() as session:
        case_service.get_case(session, case_id, current_actor())  # scope before validation
        data = load(CaseRepairSchema(), json_body())
        case = case_service.repair_case(
            session,
            case_id,
            values=data["input"],
            redact=data["redact"],
            actor=current_actor(),
            request_id=request_id(),
        )
        return case_service.case_detail_for(session, case, current_actor())
