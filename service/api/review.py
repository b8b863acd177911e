"""Review workflow endpoints (docs/review.md): thin views over :mod:`service.services.review`."""

from __future__ import annotations

from typing import Any

from flask import Response, request
from flask_smorest import Blueprint

from service.api.common import current_actor, json_body, request_id, require_roles, roles_doc
from service.schemas.common import ApiErrorSchema, load
from service.schemas.review import (
    BlindCaseSchema,
    ClaimRequestSchema,
    DecisionSchema,
    QueueArgsSchema,
    QueuePageSchema,
    ReviewRequestSchema,
)
from service.services import cases as case_service
from service.services import review as review_service
from service.uow import unit_of_work

blp = Blueprint("review", __name__, url_prefix="/api/v1", description="Review queue")

CONFLICT_DOC = "The lease was lost or expired, or the case is already resolved"


def _optional_body(schema: Any) -> dict[str, Any]:
    if not request.get_data(cache=True).strip():
        return dict(schema.load({}))
    return load(schema, json_body())


@blp.route("/tasks/<string:task>/queue/claim", methods=["POST"])
@blp.doc(
    **roles_doc("reviewer"),
    requestBody={
        "required": False,
        "content": {"application/json": {"schema": ClaimRequestSchema}},
    },
)
@blp.response(
    200, BlindCaseSchema, description="The case now leased to the caller, as reviewers see it"
)
@blp.alt_response(204, description="Nothing is waiting")
@blp.alt_response(403, schema=ApiErrorSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@require_roles("reviewer")
def claim(task: str) -> Any:
    """Lease the next case (past its SLA first, then the oldest), shown blind: no model
    suggestion, and nothing that tells an audited case from another."""
    review_service.require_person(current_actor())  # before the body: refuse first
    data = _optional_body(ClaimRequestSchema())
    with unit_of_work() as session:
        claimed = review_service.claim(
            session, task, current_actor(), exclude=data["exclude_ids"], request_id=request_id()
        )
        if claimed is None:
            return Response(status=204)
        view = review_service.claimed_view(session, claimed, current_actor().id)
    return view


@blp.route("/cases/<string:case_id>/review", methods=["POST"])
@blp.doc(
    **roles_doc("reviewer"),
    requestBody={
        "required": True,
        "content": {"application/json": {"schema": ReviewRequestSchema}},
    },
)
@blp.response(200, DecisionSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(409, schema=ApiErrorSchema, description=CONFLICT_DOC)
@blp.alt_response(422, schema=ApiErrorSchema)
@require_roles("reviewer")
def review(case_id: str) -> dict[str, Any]:
    """Decide a leased case. Resolves it exactly once (a late second submit gets 409). The
    answer says the decision is recorded and until when it can be undone, never how the
    case resolved (docs/review.md, "Blind review")."""
    review_service.require_person(current_actor())  # before the body: refuse first
    with unit_of_work() as session:
        # The case is found (and locked) before the body is read: scope before validation.
        target = review_service.case_to_decide(session, case_id, current_actor())
        data = load(ReviewRequestSchema(), json_body())
        decision = review_service.decide(
            session,
            target,
            data["label"],
            current_actor(),
            comment=data["comment"],
            request_id=request_id(),
        )
        view = review_service.decision_view(decision, decision.task)
    return view


@blp.route("/cases/<string:case_id>/release", methods=["POST"])
@blp.doc(**roles_doc("reviewer"))
@blp.response(200, BlindCaseSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(409, schema=ApiErrorSchema, description="The caller does not hold the lease")
@require_roles("reviewer")
def release(case_id: str) -> dict[str, Any]:
    """Give a leased case back to the queue (skip)."""
    with unit_of_work() as session:
        actor = current_actor()
        case = review_service.release(session, case_id, actor, request_id=request_id())
        task = review_service.get_task_for_case(session, case)
        return case_service.blind_view(session, case, task, actor.id)


@blp.route("/cases/<string:case_id>/undo", methods=["POST"])
@blp.doc(**roles_doc("reviewer"))
@blp.response(200, BlindCaseSchema, description="The case, leased to the caller again")
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(
    409, schema=ApiErrorSchema, description="Nothing of the caller's to undo, or too late"
)
@require_roles("reviewer")
def undo(case_id: str) -> dict[str, Any]:
    """Retract the caller's last decision on the case (within the lease time); the review
    stays on record, marked retracted."""
    with unit_of_work() as session:
        actor = current_actor()
        case = review_service.undo(session, case_id, actor, request_id=request_id())
        task = review_service.get_task_for_case(session, case)
        claimed = review_service.Claimed(case=case, task=task, renewed=False)
        return review_service.claimed_view(session, claimed, actor.id)


@blp.route("/tasks/<string:task>/queue", methods=["GET"])
@blp.doc(**roles_doc("reviewer", "analyst"))
@blp.arguments(QueueArgsSchema, location="query", as_kwargs=False, error_status_code=422)
@blp.response(200, QueuePageSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(422, schema=ApiErrorSchema)
@require_roles("reviewer", "analyst")
def queue(args: dict[str, Any], task: str) -> dict[str, Any]:
    """Cases waiting for or in review, oldest first; filter by state, status, reason,
    audit flag and age. Reviewers get the blind listing and filter by state and age only
    (403 otherwise)."""
    with unit_of_work() as session:
        return review_service.queue_page(
            session, task, current_actor(), review_service.QueueFilter(**args)
        )
