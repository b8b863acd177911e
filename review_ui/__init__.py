"""The review UI for business users (SPEC §8): server-rendered Flask + Jinja."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    from review_ui import views

    app.register_blueprint(views.bp)
