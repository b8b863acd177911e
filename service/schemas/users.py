"""Users as admins manage them through the API (docs/api.md, "Users")."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from service.models import ROLES


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
