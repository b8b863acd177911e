"""Security hardening applied to the whole app: login rate limiting, permanent (expiring)
sessions, security headers with a strict Content-Security-Policy, and an append-only audit
log from the ORM's point of view (the database enforces it too, see migration 0002).

The login view belongs to the review UI; the limit is attached here by endpoint name so the
policy lives in one place and the UI module stays free of it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from typing import Any

from flask import Flask, Response, render_template, request, session
from flask_limiter import Limiter
from flask_limiter.errors import RateLimitExceeded
from flask_login import user_logged_in
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session

from service.errors import error_response
from service.models import AuditEvent
from service.redis_conn import redis_url_for

log = logging.getLogger(__name__)

LOGIN_ENDPOINT = "review_ui.login"
#: Failed attempts per client address and e-mail (one account from one place). Only
#: failures count: people who sign in successfully are never throttled.
LOGIN_LIMIT = "10/minute"
#: Failed attempts per client address across every e-mail (password spraying).
LOGIN_FAILURE_LIMIT = "20/minute"

#: UI pages (and any other HTML without its own policy): nothing inline, nothing foreign.
STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
#: JSON and other non-HTML responses never need to load anything.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
DOCS_PATH = "/api/v1/docs"
_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.S)


class AuditLogIsAppendOnly(RuntimeError):
    """Raised when code tries to change or remove an audit event."""


# --------------------------------------------------------------------------- rate limit


def _digest(*parts: str) -> str:
    # Keys appear in Redis and in the limiter's log lines: no address or e-mail in clear.
    return hashlib.sha256("\0".join(parts).encode("utf-8", "replace")).hexdigest()[:32]


def login_rate_key() -> str:
    """Per client address and e-mail: one attacker cannot lock out a user from elsewhere,
    and one address cannot hammer a single account."""
    email = (request.form.get("email") or "").strip().lower()
    return "login:" + _digest(request.remote_addr or "-", email)


def login_address_key() -> str:
    """Per client address, across e-mails: one address cannot spray many accounts."""
    return "login-addr:" + _digest(request.remote_addr or "-")


def _failed_login(response: Response) -> bool:
    return response.status_code == 401


def _storage_uri(app: Flask) -> str:
    url = redis_url_for(app)
    if url.startswith("unix://"):
        return "redis+unix://" + url[len("unix://") :]
    return url


def _rate_limited(exc: RateLimitExceeded) -> Any:
    if request.path.startswith("/api/"):
        resp = error_response(429, "rate_limited", "Too many requests; retry later.")
    else:
        try:
            html = render_template(
                "error.html", status=429, message="Too many sign-in attempts. Wait a minute."
            )
        except Exception:  # the UI templates are optional for API-only apps
            html = "Too many sign-in attempts. Wait a minute."
        resp = Response(html, status=429, mimetype="text/html")
    resp.headers["Retry-After"] = "60"
    return resp


def _apply_login_limit(app: Flask, limiter: Limiter) -> bool:
    view = app.view_functions.get(LOGIN_ENDPOINT)
    if view is None:
        return False
    per_account = limiter.limit(
        app.config.get("TANDEM_LOGIN_LIMIT", LOGIN_LIMIT),
        key_func=login_rate_key,
        methods=["POST"],
        deduct_when=_failed_login,
    )
    per_address = limiter.limit(
        app.config.get("TANDEM_LOGIN_FAILURE_LIMIT", LOGIN_FAILURE_LIMIT),
        key_func=login_address_key,
        methods=["POST"],
        deduct_when=_failed_login,
    )
    app.view_functions[LOGIN_ENDPOINT] = per_address(per_account(view))  # type: ignore[assignment]
    return True


# ------------------------------------------------------------------------------ headers


def _docs_csp(body: bytes) -> str:
    """Swagger UI's initializer is an inline script: allow exactly it, by hash."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(m).digest()).decode() + "'"
        for m in _INLINE_SCRIPT.findall(body)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'; form-action 'self'"
    )


def security_headers(response: Response, *, hsts: bool) -> Response:
    headers = response.headers
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
    headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
    if hsts and request.is_secure:
        # Only over HTTPS (directly, or behind a proxy with ProxyFix): on plain HTTP the
        # header is meaningless and browsers ignore it (RFC 6797 §7.2).
        headers.setdefault("Strict-Transport-Security", "max-age=31536000; includeSubDomains")
    if "Content-Security-Policy" not in headers:
        if response.mimetype == "text/html":
            if request.path.rstrip("/") == DOCS_PATH and not response.direct_passthrough:
                headers["Content-Security-Policy"] = _docs_csp(response.get_data())
            else:
                headers["Content-Security-Policy"] = STRICT_CSP
        else:
            headers["Content-Security-Policy"] = API_CSP
    if response.mimetype == "text/html":
        headers.setdefault("Cache-Control", "no-store")
    return response


# ---------------------------------------------------------------------------- audit log


@event.listens_for(AuditEvent, "before_update")
def _no_update(_mapper: Any, _conn: Any, target: AuditEvent) -> None:
    raise AuditLogIsAppendOnly(f"audit event {target.id} may not be changed")


@event.listens_for(AuditEvent, "before_delete")
def _no_delete(_mapper: Any, _conn: Any, target: AuditEvent) -> None:
    raise AuditLogIsAppendOnly(f"audit event {target.id} may not be deleted")


@event.listens_for(Session, "do_orm_execute")
def _no_bulk_change(state: ORMExecuteState) -> None:
    """``session.execute(update(AuditEvent)...)`` bypasses the mapper events; refuse it."""
    if (state.is_update or state.is_delete) and state.bind_mapper is not None:
        if state.bind_mapper.class_ is AuditEvent:
            raise AuditLogIsAppendOnly("bulk UPDATE/DELETE of audit events is not allowed")


# ------------------------------------------------------------------------------ wiring


def init_app(app: Flask) -> None:
    settings = app.config["TANDEM"]
    app.config.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    limiter = Limiter(
        key_func=login_rate_key,
        app=app,
        storage_uri=_storage_uri(app),
        storage_options={"socket_connect_timeout": 1, "socket_timeout": 2},
        # Redis down must not lock everybody out: count in memory until it returns.
        in_memory_fallback_enabled=True,
        swallow_errors=True,
        key_prefix="tandem-limits",
        strategy="fixed-window",
    )
    app.extensions["tandem_limiter"] = limiter
    # Only the login view is limited, and its decorator checks its own limit. Drop the
    # extension's global before_request hook: it would run on every request, predict
    # included, for nothing (measured at ~0.3 ms per request).
    hooks = app.before_request_funcs.get(None, [])
    if limiter._check_request_limit in hooks:
        hooks.remove(limiter._check_request_limit)
    if not _apply_login_limit(app, limiter):
        log.info("no %s endpoint: login rate limit not applied", LOGIN_ENDPOINT)
    app.register_error_handler(RateLimitExceeded, _rate_limited)

    @user_logged_in.connect_via(app)
    def _permanent_session(_sender: Flask, **_extra: Any) -> None:
        # PERMANENT_SESSION_LIFETIME applies only to permanent sessions; without this the
        # cookie lives until the browser closes (which may be never).
        session.permanent = True

    hsts = bool(settings.session_cookie_secure)

    @app.after_request
    def _headers(response: Response) -> Response:
        return security_headers(response, hsts=hsts)
