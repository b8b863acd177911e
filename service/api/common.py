"""Helpers every API blueprint uses: strict JSON bodies and the unit of work."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import current_app, g, request
from sqlalchemy.orm import Session

from service.db import db_session, transaction
from service.errors import BadRequest, UnsupportedMediaType
from service.redis_conn import get_redis
from service.services import outbox
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


@contextmanager
def unit_of_work() -> Iterator[Session]:
    """One transaction per request; queued jobs are pushed to Redis only after it commits."""
    with transaction() as session:
        yield session
    if session.info.pop("outbox_dirty", False):
        relay_outbox()


def relay_outbox() -> None:
    try:
        with transaction() as session:
            outbox.relay(session, get_redis())
    except Exception:  # Redis down or a race with the sweeper: the sweeper retries later.
        current_app.logger.warning("outbox relay deferred", exc_info=False)
        db_session.remove()


def request_id() -> str | None:
    return getattr(g, "request_id", None)
