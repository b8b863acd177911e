"""Property tests of the input schema builder with hostile values: huge strings, deep
nesting, unicode edge cases, NaN/Infinity, wrong types. The only exception ever raised is
marshmallow's ValidationError, and an accepted value always has the declared type."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from service.input_schema import build_input_schema, validate_input

FIELDS = [
    {"name": "review", "type": "text", "max_length": 500},
    {"name": "state", "type": "category"},
    {"name": "amount", "type": "number", "required": False},
    {"name": "verified", "type": "boolean", "required": False},
]
KIND = {f["name"]: f["type"] for f in FIELDS}

nasty_text = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=50),
    st.sampled_from(
        [
            "",
            "\x00",
            "a\x00b",
            "\ud800"[:0] + "\u202e\u200b\ufeff",
            "🧨" * 300,
            "e\u0301",
            "\U0010ffff",
            "null",
            "NaN",
            "Infinity",
            "1e309",
            "<script>alert(1)</script>",
            "' OR 1=1 --",
            "x" * 501,
            "x" * 200_000,
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63, max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308]),
    nasty_text,
)
nested = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def deep(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": [value]}
    return value


hostile_values = st.one_of(nested, st.integers(min_value=50, max_value=400).map(deep))
inputs = st.one_of(
    st.fixed_dictionaries({k: hostile_values for k in KIND}),
    st.dictionaries(st.sampled_from([*KIND, "extra", "", "\x00"]), hostile_values, max_size=6),
    hostile_values,
)


def check_types(loaded: dict[str, Any]) -> None:
    for name, value in loaded.items():
        assert name in KIND, name
        if value is None:
            assert name in ("amount", "verified")
            continue
        kind = KIND[name]
        if kind in ("text", "category"):
            assert isinstance(value, str) and "\x00" not in value
            assert len(value) <= (500 if kind == "text" else 1000)
        elif kind == "number":
            assert isinstance(value, float) and math.isfinite(value)
        else:
            assert isinstance(value, bool)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(inputs)
def test_schema_load_only_raises_validation_error(value: Any) -> None:
    schema = build_input_schema(FIELDS)
    try:
        loaded = schema.load(value)
    except ValidationError:
        return
    check_types(loaded)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(inputs)
def test_validate_input_agrees_and_never_crashes(value: Any) -> None:
    try:
        loaded = validate_input(FIELDS, value)
    except ValidationError:
        try:
            build_input_schema(FIELDS).load(value)
        except ValidationError:
            return
        raise AssertionError(f"validate_input refused what the schema accepts: {value!r}")
    check_types(loaded)
    assert set(loaded) == set(KIND)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["amount"]),
    st.one_of(
        st.booleans(),
        st.text(),
        st.sampled_from([math.nan, math.inf, -math.inf, "1", "1.5"]),
        st.lists(st.integers()),
        st.dictionaries(st.text(), st.integers()),
    ),
)
def test_wrong_types_are_refused(name: str, value: Any) -> None:
    good = {"review": "fine", "state": "CA", name: value}
    for validator in (
        lambda v: build_input_schema(FIELDS).load(v),
        lambda v: validate_input(FIELDS, v),
    ):
        try:
            validator(good)
        except ValidationError as exc:
            assert name in exc.messages
        else:
            raise AssertionError(f"accepted {value!r} as a number")
