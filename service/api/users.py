"""Admins manage people's accounts: list, deactivate, reactivate, reset a password."""

from __future__ import annotations

from typing import Any

from flask_smorest import Blueprint

from service.api.auth import current_actor, require_roles, roles_doc
from service.api.common import json_body, unit_of_work
from service.api.tasks import load
from service.models import User
from service.schemas.common import ApiErrorSchema
from service.schemas.users import PasswordResetSchema, UserListSchema, UserViewSchema
from service.services import accounts

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
@blp.alt_response(409, schema=ApiErrorSchema, description="You cannot deactivate yourself")
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
