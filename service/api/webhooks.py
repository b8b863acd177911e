"""Webhook deliveries for admins: see what was sent, what failed and why; replay it."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from service.api.common import current_actor, request_id, require_roles, roles_doc
from service.schemas.common import ApiErrorSchema
from service.schemas.webhooks import DeliveryArgsSchema, DeliveryPageSchema, ReplayResultSchema
from service.services import tasks as task_service
from service.services import webhooks as webhook_service
from service.uow import unit_of_work

blp = Blueprint("webhooks", __name__, url_prefix="/api/v1", description="Webhook deliveries")


@blp.route("/tasks/<string:task>/webhooks/deliveries", methods=["GET"])
@blp.doc(**roles_doc("admin"))
@blp.arguments(DeliveryArgsSchema, location="query", as_kwargs=False, error_status_code=422)
@blp.response(200, DeliveryPageSchema)
@blp.alt_response(403, schema=ApiErrorSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(422, schema=ApiErrorSchema)
@require_roles("admin")
def list_deliveries(args: dict[str, Any], task: str) -> dict[str, Any]:
    """Deliveries of the task's webhook, newest first, optionally by status
    (pending|delivered|failed). Failed deliveries stay listed until replayed."""
    with unit_of_work() as session:
        row = task_service.get_task(session, task, current_actor())
        rows, total = webhook_service.list_deliveries(
            session, row, status=args["status"], limit=args["limit"], offset=args["offset"]
        )
        return {
            "deliveries": [webhook_service.delivery_view(d) for d in rows],
            "total": total,
            "limit": args["limit"],
            "offset": args["offset"],
        }


@blp.route("/webhooks/deliveries/<int:delivery_id>/replay", methods=["POST"])
@blp.doc(**roles_doc("admin"))
@blp.response(202, ReplayResultSchema)
@blp.alt_response(403, schema=ApiErrorSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(409, schema=ApiErrorSchema, description="The delivery is still pending")
@require_roles("admin")
def replay(delivery_id: int) -> dict[str, Any]:
    """Send a failed (or delivered) event again, same `webhook-id`, full retry schedule."""
    with unit_of_work() as session:
        actor = current_actor()
        delivery = webhook_service.get_delivery(session, delivery_id, actor)
        job_id = webhook_service.replay(session, delivery, actor, request_id=request_id())
        result = {"job_id": job_id, "delivery": webhook_service.delivery_view(delivery)}
    return result
