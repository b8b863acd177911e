"""One error shape for every failure: ``{"error": {"code", "message", "details"}}``.

The shape and codes are documented in docs/api.md."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}


class ServiceError(Exception):
    """Raised by the service layer; carries no HTTP knowledge beyond a suggested status."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ValidationFailed(ServiceError):
    status = 422
    code = "validation_error"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class Unavailable(ServiceError):
    status = 503
    code = "unavailable"


class BadRequest(ServiceError):
    status = 400
    code = "bad_request"


class ExportFailed(ServiceError):
    """The export could not be written (recorded as ``export.failed``; see docs/export.md)."""

    status = 500
    code = "export_failed"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> Response:
    resp = jsonify(error_body(code, message, details))
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="tandem"'
    return resp


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path in ("/healthz", "/readyz")


def init_app(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.details)

    @app.errorhandler(OperationalError)
    @app.errorhandler(DBAPIError)
    def _database_down(exc: Exception) -> Response | tuple[str, int]:
        # A database that is down or restarting: fail fast and let the client retry.
        log.warning("database error: %s", type(exc).__name__)
        if _wants_json():
            return error_response(503, "unavailable", "The database is unavailable; retry shortly.")
        return "The database is unavailable; retry shortly.", 503

    @app.errorhandler(DataError)
    def _value_out_of_range(exc: DataError) -> Response | tuple[str, int]:
        # A value the database refuses (out of range, too long): the client's input, not an
        # outage. Validation should have caught it; answer 422 rather than 5xx regardless.
        log.warning("database refused a value: %s", type(exc.orig).__name__)
        if _wants_json():
            return error_response(422, "validation_error", "A value is out of the accepted range.")
        return "A value is out of the accepted range.", 422


def http_exception_response(exc: HTTPException) -> Response:
    """Render werkzeug/flask-smorest HTTP errors in the product's error shape."""
    status = exc.code or 500
    code = HTTP_CODES.get(status, "error")
    details: dict[str, Any] = {}
    data = getattr(exc, "data", None)
    if isinstance(data, dict) and "messages" in data:
        # webargs/marshmallow validation: {"json": {"field": ["msg"]}} -> {"field": [...]}
        messages = data["messages"]
        for location in ("json", "query", "path", "headers", "form"):
            if location in messages:
                details.update(messages[location])
        if not details:
            details = messages
    message = exc.description or code.replace("_", " ")
    if status == 422 and details:
        message = "Invalid fields: " + ", ".join(sorted(str(k) for k in details))
    if status == 413:
        message = "The request body is larger than the limit."
    resp = error_response(status, code, message, details)
    valid = getattr(exc, "valid_methods", None)
    if status == 405 and valid:
        resp.headers["Allow"] = ", ".join(sorted(valid))  # RFC 9110 §15.5.6: it must be sent
    return resp
