"""The review UI for business users (docs/review.md): server-rendered Flask + Jinja."""

from __future__ import annotations

from flask import Flask


def duration(seconds: float | int | None) -> str:
    """Human-readable age: 45 s, 12 min, 3 h 5 min, 2 d 4 h."""
    if seconds is None:
        return "—"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86_400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86_400} d {s % 86_400 // 3600} h"


def init_app(app: Flask) -> None:
    from review_ui import views

    app.register_blueprint(views.bp)
    app.jinja_env.filters["duration"] = duration
