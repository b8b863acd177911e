"""Give every job the app's configuration and a fresh database session.

RQ forks a work-horse per job; a forked child must not reuse the parent's pooled
connections, so the pool is disposed (without closing the parent's sockets) at job start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from flask import Flask
from sqlalchemy.orm import configure_mappers

from service import observability
from service.db import db_session

P = ParamSpec("P")
R = TypeVar("R")

_app: Flask | None = None
_pid_seen: int | None = None


def set_app(app: Flask) -> None:
    global _app
    _app = app


def get_app() -> Flask:
    """The app the process that runs jobs set (``tandem worker``, the simulator, tests): the
    workers use the library and are wired to an app by the shell, never build one."""
    if _app is None:
        raise RuntimeError("no app for jobs: run them through `tandem worker` (or set_app)")
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
        token = observability.job_context.set(_job_log_context())
        started = time.perf_counter()
        outcome = "error"
        name = f"{func.__module__}.{func.__qualname__}"
        with app.app_context():
            try:
                result = func(*args, **kwargs)
                outcome = "ok"
                return result
            except Exception:
                observability.JOB_FAILURES.labels(name).inc()
                raise
            finally:
                observability.JOB_DURATION.labels(name, outcome).observe(
                    time.perf_counter() - started
                )
                observability.job_context.reset(token)
                db_session.remove()

    return wrapper


def _job_log_context() -> dict[str, str] | None:
    """The running RQ job's id and the request id the outbox stored in its meta, so the
    job's log lines join the request that caused it."""
    from rq import get_current_job

    current = get_current_job()
    if current is None:
        return None
    ctx = {"job_id": str(current.id)}
    request_id = current.meta.get("request_id")
    if request_id:
        ctx["request_id"] = str(request_id)
    return ctx


def current_job_id() -> str | None:
    from rq import get_current_job

    current = get_current_job()
    return current.id if current is not None else None
