"""Task definition endpoints (docs/tasks.md)."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from service.api.common import ANY_ROLE, current_actor, json_body, require_roles, roles_doc
from service.schemas.common import ApiErrorSchema, load
from service.schemas.tasks import TaskCreateSchema, TaskListSchema, TaskPatchSchema, TaskSchema
from service.services import tasks as task_service
from service.uow import unit_of_work

blp = Blueprint("tasks", __name__, url_prefix="/api/v1", description="Define and read tasks")


@blp.route("/tasks")
class TasksView(MethodView):
    @blp.doc(**roles_doc(*ANY_ROLE))
    @blp.response(200, TaskListSchema)
    @blp.alt_response(401, schema=ApiErrorSchema)
    @require_roles(*ANY_ROLE)
    def get(self) -> dict[str, Any]:
        """List the tasks the caller may see, with their live status."""
        with unit_of_work() as session:
            actor = current_actor()
            return {
                "tasks": [
                    task_service.task_status(session, t, actor)
                    for t in task_service.list_tasks(session, actor)
                ]
            }

    @blp.doc(
        **roles_doc("admin"),
        requestBody={
            "required": True,
            "content": {"application/json": {"schema": TaskCreateSchema}},
        },
    )
    @blp.response(201, TaskSchema)
    @blp.alt_response(409, schema=ApiErrorSchema, description="A task with this name exists")
    @blp.alt_response(422, schema=ApiErrorSchema)
    @require_roles("admin")
    def post(self) -> dict[str, Any]:
        """Create a task from its definition."""
        data = load(TaskCreateSchema(), json_body())
        with unit_of_work() as session:
            task = task_service.create_task(session, data, current_actor())
            session.flush()
            return task_service.task_status(session, task, current_actor())


@blp.route("/tasks/<string:task>")
class TaskView(MethodView):
    @blp.doc(**roles_doc(*ANY_ROLE))
    @blp.response(200, TaskSchema)
    @blp.alt_response(404, schema=ApiErrorSchema)
    @require_roles(*ANY_ROLE)
    def get(self, task: str) -> dict[str, Any]:
        """A task with its live automation, training and counts."""
        with unit_of_work() as session:
            row = task_service.get_task(session, task, current_actor())
            return task_service.task_status(session, row, current_actor())

    @blp.doc(
        **roles_doc("admin"),
        requestBody={
            "required": True,
            "content": {"application/json": {"schema": TaskPatchSchema}},
        },
    )
    @blp.response(200, TaskSchema)
    @blp.alt_response(404, schema=ApiErrorSchema)
    @blp.alt_response(422, schema=ApiErrorSchema)
    @require_roles("admin")
    def patch(self, task: str) -> dict[str, Any]:
        """Change policy, review settings or webhook; add labels or optional fields."""
        data = load(TaskPatchSchema(), json_body())
        with unit_of_work() as session:
            row = task_service.get_task(session, task, current_actor())
            task_service.update_task(session, row, data, current_actor())
            session.flush()
            session.refresh(row)
            return task_service.task_status(session, row, current_actor())
