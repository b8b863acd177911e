"""Give every job the app's configuration and a fresh database session.

RQ forks a work-horse per job; a forked child must not reuse the parent's pooled
connections, so the pool is disposed (without closing the parent's sockets) at job start.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from flask import Flask
from sqlalchemy.orm import configure_mappers

from service.db import db_session

P = ParamSpec("P")
R = TypeVar("R")

_app: Flask | None = None
_pid_seen: int | None = None


def set_app(app: Flask) -> None:
    global _app
    _app = app


def get_app() -> Flask:
    global _app
    if _app is None:
        from service import create_app

        _app = create_app()
    return _app


def job(func: Callable[P, R]) -> Callable[P, R]:
    """Run a job function inside the app context with a clean session."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        global _pid_seen
        app = get_app()
        if _pid_seen != os.getpid():
            app.extensions["tandem_engine"].dispose(close=False)
            configure_mappers()
            _pid_seen = os.getpid()
        with app.app_context():
            try:
                return func(*args, **kwargs)
            finally:
                db_session.remove()

    return wrapper


def current_job_id() -> str | None:
    from rq import get_current_job

    current = get_current_job()
    return current.id if current is not None else None


def job_meta(key: str, default: Any = None) -> Any:
    from rq import get_current_job

    current = get_current_job()
    return current.meta.get(key, default) if current is not None else default
