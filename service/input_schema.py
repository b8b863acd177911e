"""Turn a task's field list into a strict marshmallow schema for case inputs (SPEC §7).

Strict on purpose: a number sent as a string, a boolean sent as 1, NaN or an unknown field is
a client bug that would otherwise reach the model as a silently wrong value.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

DEFAULT_MAX_TEXT = 100_000
MAX_CATEGORY_LENGTH = 1_000


class StrictNumber(fields.Field):
    """A finite JSON number (int or float); bool, strings, NaN and infinities are refused."""

    default_error_messages = {
        "invalid": "Not a number.",
        "non_finite": "NaN and Infinity are not allowed.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        number = float(value)
        if not math.isfinite(number):
            raise self.make_error("non_finite")
        return number

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class StrictBoolean(fields.Field):
    default_error_messages = {"invalid": "Not a boolean (use true or false)."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class StrictString(fields.String):
    """Only real JSON strings (marshmallow's String would also refuse numbers; this is explicit)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if "\x00" in value:
            raise ValidationError("NUL characters are not allowed.")
        return value


def field_for(spec: dict[str, Any], max_text: int = DEFAULT_MAX_TEXT) -> fields.Field:
    required = bool(spec.get("required", True))
    common: dict[str, Any] = {"required": required, "allow_none": not required}
    kind = spec["type"]
    if kind == "text":
        limit = int(spec.get("max_length") or max_text)
        return StrictString(validate=validate.Length(max=limit), **common)
    if kind == "category":
        limit = int(spec.get("max_length") or MAX_CATEGORY_LENGTH)
        return StrictString(validate=validate.Length(max=limit), **common)
    if kind == "number":
        return StrictNumber(**common)
    if kind == "boolean":
        return StrictBoolean(**common)
    raise ValueError(f"unknown field type {kind!r}")


def build_input_schema(
    field_specs: list[dict[str, Any]], max_text: int = DEFAULT_MAX_TEXT
) -> Schema:
    attrs: dict[str, Any] = {spec["name"]: field_for(spec, max_text) for spec in field_specs}
    schema_cls = Schema.from_dict(attrs, name="CaseInput")
    return schema_cls(unknown=RAISE)


@lru_cache(maxsize=256)
def _cached(key: tuple[Any, ...], max_text: int) -> Schema:
    specs = [
        dict(zip(("name", "type", "required", "max_length"), item, strict=True)) for item in key
    ]
    return build_input_schema(specs, max_text)


def schema_for(field_specs: list[dict[str, Any]], max_text: int = DEFAULT_MAX_TEXT) -> Schema:
    """Cached per field list: building a schema class per request would dominate predict."""
    key = tuple(
        (s["name"], s["type"], bool(s.get("required", True)), s.get("max_length"))
        for s in field_specs
    )
    return _cached(key, max_text)


def validate_input(
    field_specs: list[dict[str, Any]], value: Any, max_text: int = DEFAULT_MAX_TEXT
) -> dict[str, Any]:
    """Validated input with every declared field present (optional ones as None)."""
    if not isinstance(value, dict):
        raise ValidationError({"input": ["Must be an object of field values."]})
    loaded: dict[str, Any] = schema_for(field_specs, max_text).load(value)
    for spec in field_specs:
        loaded.setdefault(spec["name"], None)
    return loaded
