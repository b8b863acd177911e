"""Review UI views."""

from __future__ import annotations

from flask import Blueprint, redirect, url_for
from werkzeug.wrappers import Response

bp = Blueprint("review_ui", __name__, template_folder="templates", static_folder="static",
               static_url_path="/ui/static")


@bp.get("/")
def index() -> Response:
    return redirect(url_for("api-docs.openapi_swagger_ui"))
