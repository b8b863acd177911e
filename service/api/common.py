"""What every API view uses on a request: who is calling (bearer tokens for machines, the
login session for the review UI), the JSON body, and the request id.

A browser session may call the API too (the review UI's JavaScript does), but then every
state-changing request must carry the CSRF token, exactly like a form post.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from flask import g, request
from flask_login import current_user
from flask_wtf.csrf import CSRFError, validate_csrf
from wtforms.validators import ValidationError as WTFValidationError

from service.db import db_session
from service.errors import BadRequest, Forbidden, Unauthorized, UnsupportedMediaType
from service.services.accounts import authenticate_token, user_actor
from service.services.audit import Actor
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


P = ParamSpec("P")
R = TypeVar("R")

ANY_ROLE = ("app", "reviewer", "analyst", "admin")


ACTOR_KEY = "tandem.actor"


def current_actor() -> Actor:
    """The authenticated caller, resolved once per request (kept in the WSGI environ, which,
    unlike ``g``, can never outlive the request)."""
    actor: Actor | None = request.environ.get(ACTOR_KEY)
    if actor is not None:
        return actor
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Authorization must be 'Bearer <token>'")
        found = authenticate_token(db_session(), token.strip())
        if found is None:
            raise Unauthorized("invalid or revoked token")
        request.environ[ACTOR_KEY] = found
        return found
    if current_user.is_authenticated:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            try:
                validate_csrf(request.headers.get("X-CSRFToken", ""))
            except (CSRFError, WTFValidationError) as exc:
                raise Forbidden("missing or invalid CSRF token") from exc
        actor = user_actor(current_user.user)
        request.environ[ACTOR_KEY] = actor
        return actor
    raise Unauthorized("missing bearer token")


def require_roles(*roles: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Admins may do everything; every other role only what the endpoint lists."""
    allowed = set(roles) | {"admin"}

    def decorator(view: Callable[P, R]) -> Callable[P, R]:
        @wraps(view)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            actor = current_actor()
            if actor.role not in allowed:
                raise Forbidden(
                    f"role {actor.role!r} may not do this",
                    {"required_roles": sorted(allowed)},
                )
            return view(*args, **kwargs)

        wrapper._tandem_roles = tuple(sorted(allowed))  # type: ignore[attr-defined]
        return wrapper

    return decorator


def roles_doc(*roles: str) -> dict[str, Any]:
    allowed = sorted(set(roles) | {"admin"})
    return {
        "security": [{"bearerAuth": []}],
        "description": "Roles: " + ", ".join(f"`{r}`" for r in allowed) + ".",
    }
