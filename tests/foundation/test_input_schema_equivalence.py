"""The fast input validator and the marshmallow schema give the same verdict and value on
any input (the fast one may only ever say "not sure" and defer to marshmallow)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from service.input_schema import _fast_validator, _key, schema_for

FIELDS = [
    {"name": "t", "type": "text", "required": True, "max_length": 20},
    {"name": "c", "type": "category", "required": False},
    {"name": "n", "type": "number", "required": True},
    {"name": "m", "type": "number", "required": False},
    {"name": "b", "type": "boolean", "required": False},
]

hostile = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.just("a\x00b")
    | st.just("x" * 1001),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=6,
)
inputs = st.dictionaries(st.sampled_from(["t", "c", "n", "m", "b", "extra"]), hostile, max_size=6)


def marshmallow_verdict(value: dict[str, Any]) -> dict[str, Any] | None:
    try:
        loaded = schema_for(FIELDS).load(value)
    except ValidationError:
        return None
    for spec in FIELDS:
        loaded.setdefault(spec["name"], None)
    return loaded


@settings(max_examples=600, deadline=None)
@given(inputs)
def test_fast_validator_agrees_with_marshmallow(value: dict[str, Any]) -> None:
    fast = _fast_validator(_key(FIELDS), 100_000)(value)
    slow = marshmallow_verdict(value)
    assert fast == slow


def test_fast_validator_accepts_ordinary_rows() -> None:
    check = _fast_validator(_key(FIELDS), 100_000)
    assert check({"t": "ok", "n": 1}) == {"t": "ok", "c": None, "n": 1.0, "m": None, "b": None}
    assert check({"t": "ok", "n": 1.5, "m": None, "b": False, "c": "x"}) is not None
