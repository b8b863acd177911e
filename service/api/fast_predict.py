"""The single predict's fast path: the common request served in front of Flask.

A single predict did ~0.25 ms of Tandem's own work inside ~2 ms of framework (Werkzeug's
request and response objects, Flask's dispatch and its eleven hooks, SQLAlchemy's statement
execution): bench/README.md, "Single predict". This WSGI middleware serves the request that
needs none of that — a JSON body from a cached token, for a cached task, without a cookie,
that validates and stores at the first try (with an Idempotency-Key: under a key not used
before) — with the same service functions the view calls, and answers with the same status,
headers and body.

Everything else goes to Flask untouched, body included: the first request of a token or a
task (which loads them into the per-process caches), every error (so each error keeps one
implementation, the view's), a key used before (the replay and conflict rules live in the
view), browser sessions. Nothing is stored before the fast path is sure it will answer; when
storing itself fails the view is asked to raise that same error, never to store again.
docs/architecture.md, "The single predict's fast path", says why this is not a second API.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from flask import Flask, Response, has_app_context

from service.api.predict import STORE_FAILED_KEY, parse_item
from service.db import db_session
from service.errors import ServiceError
from service.observability import CASES, REQUEST_LATENCY, REQUESTS, choose_request_id
from service.security import security_headers
from service.services import predict as predict_service
from service.services.accounts import cached_token_actor
from service.text_check import may_hold_surrogates

log = logging.getLogger(__name__)

#: The route the fast path serves, for the names a task may have (service/schemas/tasks.py).
PATH = re.compile(r"/api/v1/tasks/([a-z0-9][a-z0-9_-]{0,99})/predict")
ENDPOINT = "predict.predict"

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class FastPredict:
    """WSGI middleware around ``app.wsgi_app`` (so the test client goes through it too)."""

    def __init__(self, app: Flask, inner: WSGIApp) -> None:
        self.inner = inner
        settings = app.config["TANDEM"]
        self.max_text = settings.max_text_length
        self.max_body = int(app.config.get("MAX_CONTENT_LENGTH") or 0)
        rule = next(r.rule for r in app.url_map.iter_rules() if r.endpoint == ENDPOINT)
        # The roles the view itself allows (service.api.common.require_roles marks it).
        self.roles: frozenset[str] = frozenset(
            getattr(app.view_functions[ENDPOINT], "_tandem_roles")  # noqa: B009
        )
        self.latency = REQUEST_LATENCY.labels(rule, "POST")
        self.answered = {s: REQUESTS.labels(rule, "POST", str(s)) for s in (200, 202)}
        self._case_counters: dict[tuple[str, str, str], Any] = {}
        # The view's answer reads Flask's session (empty for a token), hence Vary: Cookie.
        self.headers = {
            scheme: _static_headers(app, scheme, hsts=bool(settings.session_cookie_secure))
            for scheme in ("http", "https")
        }

    def _counted(self, task: str, route: str, reason: str) -> Any:
        """``tandem_cases_total``'s child for these labels, found once (as ``count_cases``
        counts a single case)."""
        key = (task, route, reason)
        child = self._case_counters.get(key)
        if child is None:
            child = self._case_counters[key] = CASES.labels(task, route or "", reason or "")
        return child

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD") == "POST":
            match = PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match is not None:
                answer = self._serve(environ, match.group(1))
                if answer is not None:
                    status, headers, body = answer
                    start_response(status, headers)
                    return [body]
        return self.inner(environ, start_response)

    def _serve(self, environ: dict[str, Any], task: str) -> tuple[str, list, bytes] | None:
        """The answer, or None to let Flask serve the request (nothing stored then)."""
        t0 = time.perf_counter()
        static_headers = self.headers.get(environ.get("wsgi.url_scheme", ""))
        key = environ.get("HTTP_IDEMPOTENCY_KEY")
        if (
            static_headers is None
            or (key is not None and not 1 <= len(key) <= 200)
            or "HTTP_COOKIE" in environ
            or _mimetype(environ.get("CONTENT_TYPE", "")) != "application/json"
        ):
            return None
        scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        actor = cached_token_actor(token.strip())
        if actor is None or actor.role not in self.roles or not actor.may_access(task):
            return None
        rt = predict_service.cached_runtime(task)
        if rt is None:
            return None
        raw = _read_body(environ, self.max_body)
        if raw is None:
            return None
        try:
            # The parser the view uses (Flask's: the standard library), so both read every
            # body alike: orjson would turn integers beyond 64 bits into floats.
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return None  # the view answers 400
        if may_hold_surrogates(raw):
            return None
        request_id = choose_request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        try:
            item = parse_item(body)
            values = predict_service.check_item(
                rt, item, self.max_text, rt.validator(self.max_text)
            )
        except ServiceError:
            return None
        digest = None
        if key is not None:
            # Stored with ON CONFLICT DO NOTHING: a key already used stores nothing, and the
            # view then answers the replay (or 409) as it always does.
            item.idempotency_key = key
            digest = predict_service.request_hash(body)
        row = predict_service.build_row(rt, item, values, request_id=request_id, digest=digest)
        view = predict_service.case_view(row)
        try:
            payload = orjson.dumps(view, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:
            return None
        session = db_session()
        try:
            # Outside tests one autocommitted statement; inside a caller's transaction (the
            # tests' savepoints) committed like the view's unit of work commits.
            stored = predict_service.store_one(session, rt, row)
            if session.in_transaction():
                session.commit()
        except Exception as exc:
            session.rollback()
            if not has_app_context():
                db_session.remove()
            log.debug("fast predict: storing failed, the view answers: %s", exc)
            environ[STORE_FAILED_KEY] = exc
            return None
        # Flask's teardown removes the thread's session after each request. Here it holds
        # nothing (the INSERT went through the thread's own autocommit connection), so it is
        # kept for the next request; a caller's app context (the tests) keeps it anyway.
        if session.identity_map and not has_app_context():
            db_session.remove()
        if not stored:
            if key is None:
                predict_service.forget(rt.name)  # the task moved on: the view reloads, routes
            return None  # (with a key: stored before, or the task moved on; the view knows)
        status = 200 if view["route"] == "auto" else 202
        self._counted(task, view["route"], view["reason"]).inc()
        self.answered[status].inc()
        self.latency.observe(time.perf_counter() - t0)
        headers = [  # in the view's order: Content-Type first, the hooks' headers after
            static_headers[0],
            ("Content-Length", str(len(payload))),
            ("X-Request-ID", request_id),
            *static_headers[1:],
        ]
        return ("200 OK" if status == 200 else "202 ACCEPTED"), headers, payload


def _mimetype(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def _read_body(environ: dict[str, Any], limit: int) -> bytes | None:
    """The body, with ``wsgi.input`` replaced by a copy Flask can read again."""
    length = environ.get("CONTENT_LENGTH") or ""
    if not length.isdigit() or environ.get("HTTP_TRANSFER_ENCODING"):
        return None
    size = int(length)
    if limit and size > limit:
        return None  # the view answers 413
    raw = environ["wsgi.input"].read(size) if size else b""
    environ["wsgi.input"] = io.BytesIO(raw)
    if len(raw) != size:
        return None
    return raw


def _static_headers(app: Flask, scheme: str, *, hsts: bool) -> list[tuple[str, str]]:
    """The headers the view's JSON answer gets from every after-request hook, computed once
    by running the same header function on a JSON response of this route."""
    with app.test_request_context(
        "/api/v1/tasks/t/predict", method="POST", base_url=f"{scheme}://localhost"
    ):
        response = Response(b"", mimetype="application/json")
        response.headers["X-Content-Type-Options"] = "nosniff"
        security_headers(response, hsts=hsts)
    response.vary.add("Cookie")
    headers = [(k, v) for k, v in response.headers.items() if k != "Content-Length"]
    assert headers[0][0] == "Content-Type", headers
    return headers


def install(app: Flask) -> None:
    """Put the fast path in front of the app (``TANDEM_PREDICT_FAST_PATH=0`` leaves it out)."""
    if app.config["TANDEM"].predict_fast_path:
        app.wsgi_app = FastPredict(app, app.wsgi_app)  # type: ignore[method-assign]
