"""Dashboard numbers for one task (docs/stats.md): a thin view over service.services.stats."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from service.api.common import current_actor, require_roles, roles_doc
from service.schemas.common import ApiErrorSchema
from service.schemas.stats import StatsArgsSchema, TaskStatsSchema
from service.services import stats as stats_service
from service.services import tasks as task_service
from service.uow import unit_of_work

blp = Blueprint("stats", __name__, url_prefix="/api/v1", description="Automation and quality stats")


@blp.route("/tasks/<string:task>/stats", methods=["GET"])
@blp.doc(**roles_doc("analyst"))
@blp.arguments(StatsArgsSchema, location="query", as_kwargs=False, error_status_code=422)
@blp.response(200, TaskStatsSchema)
@blp.alt_response(403, schema=ApiErrorSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(422, schema=ApiErrorSchema)
@require_roles("analyst")
def task_stats(args: dict[str, Any], task: str) -> dict[str, Any]:
    """Automation rate, live error and override rate (weighted to describe all traffic, with
    exact intervals), time to decision, queue, reviewers, a time series and drift.

    Window: `since`/`until` (ISO 8601, default the last 7 days); `bucket` hour|day (default
    hour for windows up to 2 days, else day). Buckets are UTC-aligned.
    """
    with unit_of_work() as session:
        row = task_service.get_task(session, task, current_actor())
        return stats_service.task_stats(
            session, row, since=args["since"], until=args["until"], bucket=args["bucket"]
        )
