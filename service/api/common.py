"""Helpers every API blueprint uses: strict JSON bodies and the request id."""

from __future__ import annotations

from typing import Any

from flask import g, request

from service.errors import BadRequest, UnsupportedMediaType
from service.text_check import ensure_valid_text, may_hold_surrogates

ERROR_RESPONSES = {
    400: "Malformed JSON",
    401: "Missing or invalid token",
    403: "Role or task scope does not allow this",
    404: "Not found",
    413: "Body too large",
    415: "Body is not JSON",
    422: "Schema violation; details name the fields",
}


def json_body(*, check_text: bool = True) -> Any:
    """The request body as JSON: 415 unless it is JSON, 400 when it does not parse, 422 when
    a string in it is not valid Unicode (``check_text=False``: the caller checks per item)."""
    if not request.is_json:
        raise UnsupportedMediaType("Content-Type must be application/json")
    try:
        data = request.get_json(silent=True, cache=True)
    except RecursionError:
        raise BadRequest("The body is nested too deeply") from None
    if data is None:
        raw = request.get_data(cache=True)
        if raw.strip() == b"null":
            return None
        raise BadRequest("The body is not valid JSON")
    if check_text and may_hold_surrogates(request.get_data(cache=True)):
        ensure_valid_text(data)
    return data


def request_id() -> str | None:
    return getattr(g, "request_id", None)
