"""Admins manage people's accounts: list, change role and tasks, deactivate, reactivate,
reset a password (the admin pages call the same services: review_ui/views.py)."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from service.api.common import current_actor, json_body, require_roles, roles_doc
from service.models import User
from service.schemas.common import ApiErrorSchema, load
from service.schemas.users import (
    PasswordResetSchema,
    UserListSchema,
    UserPatchSchema,
    UserViewSchema,
)
from service.services import accounts
from service.uow import unit_of_work

blp = Blueprint("users", __name__, url_prefix="/api/v1", description="People's accounts")


@blp.route("/users", methods=["GET"])
@blp.doc(**roles_doc())
@blp.response(200, UserListSchema)
@require_roles()
def list_users() -> dict[str, Any]:
    """The accounts within the admin's task scope."""
    with unit_of_work() as session:
        return {"users": accounts.visible_users(session, current_actor())}


@blp.route("/users/<int:user_id>/deactivate", methods=["POST"])
@blp.doc(**roles_doc())
@blp.response(200, UserViewSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(
    409, schema=ApiErrorSchema, description="Yourself, or the last active admin of every task"
)
@require_roles()
def deactivate(user_id: int) -> User:
    """Stop the person signing in; their sessions and tokens end at once."""
    with unit_of_work() as session:
        actor = current_actor()
        return accounts.deactivate_user(
            session, accounts.find_user(session, actor, user_id=user_id), actor
        )


@blp.route("/users/<int:user_id>/reactivate", methods=["POST"])
@blp.doc(**roles_doc())
@blp.response(200, UserViewSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@require_roles()
def reactivate(user_id: int) -> User:
    """Let a deactivated person sign in again (revoked tokens stay revoked)."""
    with unit_of_work() as session:
        actor = current_actor()
        return accounts.reactivate_user(
            session, accounts.find_user(session, actor, user_id=user_id), actor
        )


@blp.route("/users/<int:user_id>/password", methods=["POST"])
@blp.doc(
    **roles_doc(),
    requestBody={
        "required": True,
        "content": {"application/json": {"schema": PasswordResetSchema}},
    },
)
@blp.response(200, UserViewSchema)
@blp.alt_response(404, schema=ApiErrorSchema)
@blp.alt_response(422, schema=ApiErrorSchema)
@require_roles()
def reset_password(user_id: int) -> User:
    """Set a new password; every session and token of that person ends."""
    with unit_of_work() as session:
        actor = current_actor()
        user = accounts.find_user(session, actor, user_id=user_id)
        data = load(PasswordResetSchema(), json_body())
        return accounts.reset_password(session, user, data["password"], actor)


@blp.route("/users/<int:user_id>", methods=["PATCH"])
@blp.doc(
    **roles_doc(),
    requestBody={
        "required": True,
        "content": {"application/json": {"schema": UserPatchSchema}},
    },
)
@blp.response(200, UserViewSchema)
@blp.alt_response(403, schema=ApiErrorSchema, description="More than you hold yourself")
@blp.alt_response(404, schema=ApiErrorSchema, description="No such user, or an unknown task")
@blp.alt_response(
    409, schema=ApiErrorSchema, description="It would leave no active admin of every task"
)
@blp.alt_response(422, schema=ApiErrorSchema)
@require_roles()
def change_access(user_id: int) -> User:
    """A new role and/or task scope (null: every task). Sessions get it at their next request;
    tokens bound to the person that would exceed the new rights are revoked."""
    with unit_of_work() as session:
        actor = current_actor()
        user = accounts.find_user(session, actor, user_id=user_id)
        data = load(UserPatchSchema(), json_body())
        kwargs: dict[str, Any] = {"role": data.get("role")}
        if "task_scope" in data:
            kwargs["task_scope"] = data["task_scope"]
        return accounts.change_access(session, user, actor, **kwargs).user
