"""Schemas shared by every endpoint (errors, pagination)."""

from __future__ import annotations

from marshmallow import Schema, fields


class ErrorDetailSchema(Schema):
    code = fields.String(required=True, metadata={"example": "validation_error"})
    message = fields.String(required=True)
    details = fields.Dict(required=True)


class ApiErrorSchema(Schema):
    """The one error shape (SPEC §6)."""

    error = fields.Nested(ErrorDetailSchema, required=True)


class PageQuerySchema(Schema):
    limit = fields.Integer(load_default=50, validate=lambda n: 1 <= n <= 500)
    offset = fields.Integer(load_default=0, validate=lambda n: n >= 0)
