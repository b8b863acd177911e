"""Turn a task's field list into a strict marshmallow schema for case inputs (docs/api.md).

Strict on purpose: a number sent as a string, a boolean sent as 1, NaN or an unknown field is
a client bug that would otherwise reach the model as a silently wrong value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

DEFAULT_MAX_TEXT = 100_000
MAX_CATEGORY_LENGTH = 1_000


class StrictNumber(fields.Field):
    """A finite JSON number (int or float); bool, strings, NaN and infinities are refused."""

    default_error_messages = {
        "invalid": "Not a number.",
        "non_finite": "NaN, Infinity and numbers beyond ±1.8e308 are not allowed.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.make_error("invalid")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond a double's range (1 followed by 400 zeros)
            raise self.make_error("non_finite") from None
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
    return _cached(_key(field_specs), max_text)


FastValidator = Callable[[dict[str, Any]], "dict[str, Any] | None"]


def _fast_validator(key: tuple[Any, ...], max_text: int) -> FastValidator:
    """A plain-Python check with exactly the marshmallow schema's acceptance rules.

    It only ever says "valid, here is the value" or "not sure": anything it does not accept
    goes through marshmallow, which produces the error messages. A property test holds the
    two to the same verdict on hostile inputs. Marshmallow costs ~60 µs per row; this ~3 µs.
    """
    checks: list[tuple[str, str, bool, int]] = []
    for name, kind, required, max_length in key:
        if kind == "text":
            limit = int(max_length or max_text)
        elif kind == "category":
            limit = int(max_length or MAX_CATEGORY_LENGTH)
        else:
            limit = 0
        checks.append((name, kind, required, limit))
    names = frozenset(c[0] for c in checks)

    def check(value: dict[str, Any]) -> dict[str, Any] | None:
        if not names.issuperset(value):
            return None
        out: dict[str, Any] = {}
        for name, kind, required, limit in checks:
            if name not in value:
                if required:
                    return None
                out[name] = None
                continue
            item = value[name]
            if item is None:
                if required:
                    return None
                out[name] = None
            elif kind == "number":
                if type(item) is int or type(item) is float:
                    try:
                        number = float(item)
                    except OverflowError:
                        return None  # marshmallow's check says why
                    if not math.isfinite(number):
                        return None
                    out[name] = number
                else:
                    return None
            elif kind == "boolean":
                if type(item) is not bool:
                    return None
                out[name] = item
            elif type(item) is str and len(item) <= limit and "\x00" not in item:
                out[name] = item
            else:
                return None
        return out

    return check


@lru_cache(maxsize=256)
def _cached_fast(key: tuple[Any, ...], max_text: int) -> FastValidator:
    return _fast_validator(key, max_text)


def _key(field_specs: list[dict[str, Any]]) -> tuple[Any, ...]:
    return tuple(
        (s["name"], s["type"], bool(s.get("required", True)), s.get("max_length"))
        for s in field_specs
    )


def fast_validator(
    field_specs: list[dict[str, Any]], max_text: int = DEFAULT_MAX_TEXT
) -> FastValidator:
    """The plain-Python check for this field list, looked up once for a whole batch (the
    lookup key alone cost a batch ~2 µs an item). ``None`` from it means "ask
    :func:`validate_input`", which gives the errors."""
    return _cached_fast(_key(field_specs), max_text)


def validate_input(
    field_specs: list[dict[str, Any]], value: Any, max_text: int = DEFAULT_MAX_TEXT
) -> dict[str, Any]:
    """Validated input with every declared field present (optional ones as None)."""
    if not isinstance(value, dict):
        raise ValidationError({"input": ["Must be an object of field values."]})
    fast = _cached_fast(_key(field_specs), max_text)(value)
    if fast is not None:
        return fast
    loaded: dict[str, Any] = schema_for(field_specs, max_text).load(value)
    for spec in field_specs:
        loaded.setdefault(spec["name"], None)
    return loaded
