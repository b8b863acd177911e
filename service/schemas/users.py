"""Users as admins manage them through the API (docs/api.md, "Users")."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from service.models import PERSON_ROLES, ROLES


class UserViewSchema(Schema):
    id = fields.Integer()
    email = fields.String()
    role = fields.String(validate=validate.OneOf(ROLES))
    task_scope = fields.List(fields.String(), allow_none=True)
    active = fields.Boolean()
    pseudonym = fields.String()
    created_at = fields.DateTime()
    last_login_at = fields.DateTime(allow_none=True)


class UserListSchema(Schema):
    users = fields.List(fields.Nested(UserViewSchema))


class PasswordResetSchema(Schema):
    password = fields.String(required=True, validate=validate.Length(min=8, max=1000))


class UserPatchSchema(Schema):
    """A new role and/or task scope; ``task_scope`` null means every task. At least one."""

    # Checked by the service (accounts.change_access), which names app's misuse.
    role = fields.String(metadata={"enum": list(PERSON_ROLES)})
    task_scope = fields.List(
        fields.String(validate=validate.Length(min=1, max=200)),
        allow_none=True,
        validate=validate.Length(max=1000),
    )

    @validates_schema
    def _something(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if not data:
            raise ValidationError("Name a role, a task_scope or both.", "_schema")
