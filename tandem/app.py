"""The app factory: the library (``service``), the JSON API and the review UI wired into one
Flask app.

``create_app`` is the only way an app is built: the CLI, the web server, the workers and the
tests all go through it, so every process is configured the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from flask import Flask, Response, g, request
from flask_wtf.csrf import CSRFProtect
from werkzeug.routing import IntegerConverter, Map

from service import errors, login, observability, redis_conn, security
from service.config import Settings
from service.db import configure, db_session, make_engine

csrf = CSRFProtect()


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    settings = settings or Settings.from_env()
    if overrides:  # on a copy: the caller's Settings (shared by other apps) stay as they are
        settings = dataclasses.replace(settings, **overrides)
    app = Flask(__name__, instance_path=str(settings.home))
    app.config.update(
        TANDEM=settings,
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        TESTING=settings.testing,
        JSON_SORT_KEYS=False,
        WTF_CSRF_TIME_LIMIT=None,  # tied to the session lifetime instead
    )
    engine = make_engine(settings.database_url)
    app.extensions["tandem_engine"] = engine
    configure(engine)

    # Ids in URLs are 64-bit: a larger number does not match the route (404) instead of
    # reaching the database as an out-of-range value.
    app.url_map.converters["int"] = BoundedIntConverter
    errors.init_app(app)
    redis_conn.init_app(app)
    login.init_app(app, secure_cookies=settings.session_cookie_secure)
    csrf.init_app(app)

    from service import api
    from service.api import fast_predict

    api.init_app(app)
    # The API authenticates by bearer token (or checks the CSRF header itself for browser
    # sessions, see service.api.common), so the form-based CSRF check does not apply to it.
    for name in ("tasks", "predict", "cases", "health"):
        if name in app.blueprints:
            csrf.exempt(app.blueprints[name])
    for name, bp in app.blueprints.items():
        if name.startswith("api_") or getattr(bp, "url_prefix", "") == "/api/v1":
            csrf.exempt(bp)

    _register_ui(app)
    # After the UI: security attaches the login rate limit to the UI's login view by name.
    observability.init_app(app)
    security.init_app(app)

    @app.before_request
    def _start_request() -> None:
        """A request id, and the signed-in user resolved afresh: never from an app context
        kept open across requests (tests and embedded callers do that; Flask-Login caches the
        user on ``g``, Flask-WTF the CSRF token)."""
        g.request_id = observability.choose_request_id(request.headers.get("X-Request-ID", ""))
        g.pop("_login_user", None)
        g.pop("csrf_token", None)

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["X-Request-ID"] = getattr(g, "request_id", "")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.teardown_appcontext
    def _remove_session(_exc: BaseException | None) -> None:
        db_session.remove()

    for name in ("service", "tandem"):
        logging.getLogger(name).setLevel(logging.INFO)
    fast_predict.install(app)  # last: it reads the route and the headers set up above
    return app


class BoundedIntConverter(IntegerConverter):
    def __init__(self, url_map: Map, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", 2**63 - 1)
        super().__init__(url_map, *args, **kwargs)


def _register_ui(app: Flask) -> None:
    """The review UI lives in its own top-level package; it is optional for API-only tests."""
    import review_ui

    review_ui.init_app(app)
