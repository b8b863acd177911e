"""Schemas shared by every endpoint (errors, pagination) and the field types that keep the
OpenAPI document typed for client generators (docs/api.md, "Generating a client")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from marshmallow import Schema, ValidationError, fields

from service.errors import ValidationFailed


def load(schema: Schema, data: Any) -> dict[str, Any]:
    """``data`` loaded by ``schema``, or :class:`ValidationFailed` (422) naming the fields:
    how the API, the CLI, the demo and the simulator read a definition alike."""
    if not isinstance(data, dict):
        raise ValidationFailed("The body must be a JSON object", {"_schema": ["Not an object."]})
    try:
        return dict(schema.load(data))
    except ValidationError as exc:
        details = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise ValidationFailed("Invalid fields: " + ", ".join(sorted(details)), details) from exc


#: One value of a case's ``input``: what the task's field types take (text and category:
#: string, number: number, boolean: true/false; an optional field may be null).
INPUT_VALUE = {
    "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}],
    "nullable": True,
}


class Timestamp(fields.DateTime):
    """An instant, ISO 8601 in UTC (``format: date-time`` in the document). The services
    format their instants themselves ("...Z"): those strings are passed through unchanged."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        return super()._serialize(value, attr, obj, **kwargs)


class OneOf(fields.Raw):
    """A JSON object of one of several schemas, passed through as is; documented as
    ``oneOf`` (service/api/openapi.py) so a generated client gets one typed class per shape."""

    def __init__(self, schemas: Sequence[type[Schema]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.schemas = tuple(schemas)


def input_map(description: str, **kwargs: Any) -> fields.Dict:
    """A case's ``input``: field name -> value, typed as the task's field types allow."""
    return fields.Dict(
        keys=fields.String(),
        metadata={"description": description, "additionalProperties": INPUT_VALUE},
        **kwargs,
    )


class ErrorDetailSchema(Schema):
    code = fields.String(required=True, metadata={"example": "validation_error"})
    message = fields.String(required=True)
    details = fields.Dict(
        required=True,
        metadata={
            "description": "what went wrong where: for validation errors, field name -> "
            "messages (nested for nested fields)"
        },
    )


class ApiErrorSchema(Schema):
    """The one error shape (docs/api.md, "Errors")."""

    error = fields.Nested(ErrorDetailSchema, required=True)
