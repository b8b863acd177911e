"""What the OpenAPI document needs beyond flask-smorest's defaults to give a generated client
(docs/api.md, "Generating a client") a type for every value: nullable nested schemas and enums
written the way generators read them, ``oneOf`` fields, and the webhook payloads.

The document stays OpenAPI 3.0.3: the bundled Swagger UI (4.x) cannot show 3.1, so the
webhook payloads are published as components and under ``x-webhooks`` (the 3.1 ``webhooks``
layout, as a vendor extension; docs/webhooks.md, "Payload schemas").
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from marshmallow import fields

from service.schemas.common import OneOf
from service.schemas.export import DYNAMIC_COLUMN
from service.schemas.webhooks import EVENT_SCHEMAS

#: apispec's 3.0 rendering of a null allowed beside a nested schema: an untyped object first,
#: which generators take as the type (a client with no ``suggestion.label``).
_UNTYPED_NULL = {"type": "object", "nullable": True}


def typed_nullable(self: Any, field: fields.Field, ret: dict[str, Any], **_: Any) -> dict[str, Any]:
    """A nullable nested schema as ``allOf: [$ref], nullable: true``, and a nullable enum as
    ``anyOf: [enum], nullable: true`` (generators make three types of an enum listing null)."""
    if not field.allow_none:
        return {}
    any_of = ret.get("anyOf")
    if isinstance(any_of, list) and _UNTYPED_NULL in any_of:
        del ret["anyOf"]
        return {"allOf": [s for s in any_of if s != _UNTYPED_NULL], "nullable": True}
    enum = ret.get("enum")
    if isinstance(enum, list) and None in enum:
        inner = {"type": ret.pop("type"), "enum": [v for v in ret.pop("enum") if v is not None]}
        ret.pop("nullable", None)
        return {"anyOf": [inner], "nullable": True}
    return {}


def one_of(self: Any, field: fields.Field, **_: Any) -> dict[str, Any]:
    """:class:`service.schemas.common.OneOf` as ``oneOf`` of its schemas' components."""
    if not isinstance(field, OneOf):
        return {}
    return {"oneOf": [self.resolve_nested_schema(schema) for schema in field.schemas]}


def add_converters(spec_converter: Any) -> None:
    spec_converter.add_attribute_function(one_of)
    spec_converter.add_attribute_function(typed_nullable)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_WEBHOOK_HEADERS = (
    ("webhook-id", "unique per event; the same on every retry and replay"),
    ("webhook-timestamp", "seconds since the epoch, when this attempt was signed"),
    ("webhook-signature", "v1,<base64 HMAC-SHA256> (docs/webhooks.md)"),
)


def finish(spec: APISpec, resolve: Any) -> None:
    """Once every blueprint is registered: the export row's task-named columns, and every
    webhook event as a component and an ``x-webhooks`` entry."""
    schemas = spec.components.schemas
    if "ExportRow" in schemas:
        schemas["ExportRow"]["additionalProperties"] = DYNAMIC_COLUMN
    webhooks: dict[str, Any] = {}
    for event, schema in EVENT_SCHEMAS.items():
        name = resolve(schema)
        if name not in schemas:
            spec.components.schema(name, schema=schema)
        webhooks[event] = {
            "post": {
                "summary": (schema.__doc__ or "").strip(),
                "operationId": "webhook_" + event.replace(".", "_"),
                "parameters": [
                    {
                        "in": "header",
                        "name": h,
                        "required": True,
                        "description": d,
                        "schema": {"type": "string"},
                    }
                    for h, d in _WEBHOOK_HEADERS
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(name)}},
                },
                "responses": {
                    "2XX": {"description": "Received; anything else (or none in 10 s) is retried"}
                },
            }
        }
    spec.options["x-webhooks"] = webhooks
