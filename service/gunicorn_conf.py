"""gunicorn settings for production.

Run: ``gunicorn -c python:service.gunicorn_conf 'service:create_app()'``.

Only what Tandem needs beyond gunicorn's defaults: the Prometheus multiprocess clean-up hook
(``PROMETHEUS_MULTIPROC_DIR``), JSON-friendly access logs without query strings, and a
bounded request time so a stuck request is killed and its worker replaced.
"""

from __future__ import annotations

import os
from typing import Any

bind = os.environ.get("TANDEM_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
timeout = int(os.environ.get("TANDEM_WEB_TIMEOUT", "60"))
graceful_timeout = 30
# %(U)s is the path without the query string: nothing a client put in the URL query is logged.
access_log_format = (
    '{"remote":"%(h)s","method":"%(m)s","path":"%(U)s","status":%(s)s,'
    '"bytes":%(B)s,"duration_ms":%(M)s,"request_id":"%({x-request-id}o)s"}'
)
accesslog = os.environ.get("TANDEM_ACCESS_LOG", "-")


def child_exit(_server: Any, worker: Any) -> None:
    """Let prometheus_client drop a dead worker's live gauges (counters are kept)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
