"""Liveness, readiness and metrics (no authentication: used by orchestrators and Prometheus)."""

from __future__ import annotations

from typing import Any

from alembic.runtime.migration import MigrationContext
from flask import Blueprint, Response, current_app, jsonify
from sqlalchemy import text

from service import migrate
from service.db import READ_ONLY_OPTION
from service.redis_conn import get_redis

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz() -> Response:
    """The process is up (it does not touch dependencies: restarting would not help them)."""
    return jsonify({"status": "ok"})


@blp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready to serve: database reachable and migrated to head, Redis reachable."""
    checks: dict[str, Any] = {}
    ok = True
    try:
        # A read: on SQLite a probe must not wait behind a writer for the write lock.
        engine = current_app.extensions["tandem_engine"]
        with engine.connect().execution_options(**{READ_ONLY_OPTION: True}) as conn:
            conn.execute(text("SELECT 1"))
            at_head = MigrationContext.configure(conn).get_current_revision() in migrate.heads()
        checks["database"] = "ok" if at_head else "migrations pending"
        ok = ok and at_head
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
        ok = False
    try:
        get_redis().ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"unavailable: {type(exc).__name__}"
        ok = False
    body = {"status": "ok" if ok else "degraded", "checks": checks}
    if current_app.config["TANDEM"].embedded:
        body["mode"] = "embedded"
    return jsonify(body), (200 if ok else 503)
