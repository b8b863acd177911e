"""The JSON API v1 (docs/api.md): thin views over the service layer, documented by flask-smorest."""

from __future__ import annotations

import swagger_ui_bundle
from flask import Flask, Response, send_from_directory
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from service.api import openapi
from service.errors import http_exception_response
from service.schemas.common import ApiErrorSchema


class TandemApi(Api):
    """flask-smorest with the product's error shape for every HTTP error."""

    # The documented `default` error response must be the shape we actually send.
    ERROR_SCHEMA = ApiErrorSchema

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        return http_exception_response(error)


api = TandemApi()
SWAGGER_STATIC = "/api/v1/docs/static/"


def init_app(app: Flask) -> None:
    app.config.update(
        API_TITLE="Tandem",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        # Served from the installed swagger-ui-bundle package: the docs work offline.
        OPENAPI_SWAGGER_UI_URL=SWAGGER_STATIC,
        API_SPEC_OPTIONS={
            "info": {
                "description": "Human-in-the-loop augmentation service. Every error has the "
                'shape {"error": {"code", "message", "details"}}.',
            },
            "servers": [{"url": "/"}],
        },
    )
    api.init_app(app)
    openapi.add_converters(api.ma_plugin.converter)
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})

    from service.api import (
        cases,
        export,
        health,
        model_versions,
        predict,
        review,
        stats,
        tasks,
        users,
        webhooks,
    )

    for module in (
        tasks,
        predict,
        cases,
        review,
        stats,
        webhooks,
        export,
        model_versions,
        users,
    ):
        api.register_blueprint(module.blp)
    app.register_blueprint(health.blp)
    _document_auth_errors()
    openapi.finish(api.spec, api.ma_plugin.schema_name_resolver)

    @app.get(SWAGGER_STATIC + "<path:filename>")
    def swagger_static(filename: str) -> Response:
        return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename, max_age=86400)


def _document_auth_errors() -> None:
    """Every authenticated operation can answer 401 and 403 in the error shape; say so once
    here instead of on every view."""
    from service.schemas.common import ApiErrorSchema

    if "ApiError" not in api.spec.components.schemas:
        api.spec.components.schema("ApiError", schema=ApiErrorSchema)
    ref = {"$ref": "#/components/schemas/ApiError"}
    for operations in api.spec._paths.values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "security" not in operation:
                continue
            responses = operation.setdefault("responses", {})
            for status, text in (
                ("401", "Missing or invalid token"),
                ("403", "Role or task scope does not allow this"),
            ):
                responses.setdefault(
                    status, {"description": text, "content": {"application/json": {"schema": ref}}}
                )
