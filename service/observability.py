"""Metrics (``GET /metrics``) and structured JSON logs with the request id.

Why this shape:

* Request latency and case counts are cheap in-process counters (one ``inc`` per request on
  the predict path). Everything that describes *state* (queue depth, automation, live error,
  training and webhook outcomes, RQ queue lengths) is read at scrape time by
  :class:`StateCollector` from PostgreSQL and Redis, with a short cache: every web process
  reports the same truth, whichever machine the workers run on, and a restart loses nothing.
* Several web processes serve ``/metrics``; set ``PROMETHEUS_MULTIPROC_DIR`` (an empty,
  writable folder, wiped at deploy) before ``tandem serve`` starts and the in-process
  counters of all of them are merged (prometheus_client multiprocess mode). Only counters
  and histograms are used, so a dead worker's files stay correct without clean-up hooks.
* Logs are one JSON object per line with ``request_id`` (from the request, or from the RQ job
  meta the outbox stored, so a job's lines join the request that caused it). Bearer tokens
  are masked as a last line of defence; case inputs are never logged by the service.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from service import queues
from service.db import read_only

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- metrics

REQUEST_LATENCY = Histogram(
    "tandem_http_request_duration_seconds",
    "HTTP request latency by endpoint (URL rule, not raw path) and method.",
    ["endpoint", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REQUESTS = Counter(
    "tandem_http_requests_total",
    "HTTP responses by endpoint, method and status code.",
    ["endpoint", "method", "status"],
)
CASES = Counter(
    "tandem_cases_total",
    "Cases created by predict, by task, route and reason (idempotent replays not counted).",
    ["task", "route", "reason"],
)
JOB_DURATION = Histogram(
    "tandem_job_duration_seconds",
    "Background job run time by job function and outcome (ok|error).",
    ["job", "outcome"],
    buckets=(0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600),
)
JOB_FAILURES = Counter(
    "tandem_job_failures_total",
    "Background job runs that raised (RQ retries them per queue policy).",
    ["job"],
)


def choose_request_id(incoming: str) -> str:
    """The caller's ``X-Request-ID`` (first 64 characters) when it is printable, else a new
    one: it is logged, stored on the case and sent back."""
    return incoming[:64] if incoming and incoming.isprintable() else secrets.token_hex(8)


def count_cases(task: str, views: list[dict[str, Any]]) -> None:
    """Count created cases; a batch groups by (route, reason) so it costs a few incs."""
    if len(views) == 1:
        v = views[0]
        if "case_id" in v:
            CASES.labels(task, v.get("route") or "", v.get("reason") or "").inc()
        return
    groups: dict[tuple[str, str], int] = {}
    for v in views:
        if "case_id" not in v:
            continue
        key = (v.get("route") or "", v.get("reason") or "")
        groups[key] = groups.get(key, 0) + 1
    for (route, reason), n in groups.items():
        CASES.labels(task, route, reason).inc(n)


class StateCollector(Collector):
    """Gauges read from the database and Redis at scrape time, cached for ``ttl`` seconds
    so a scrape storm cannot load the database."""

    def __init__(self, app: Flask, ttl: float = 10.0) -> None:
        self.app = app
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cached: list[GaugeMetricFamily] = []
        self._at = 0.0

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Without this, registering the collector would run a full collection at app start
        # (before an embedded database is even migrated).
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            if time.monotonic() - self._at > self.ttl or not self._cached:
                self._cached = self._gather()
                self._at = time.monotonic()
            metrics = list(self._cached)
        yield from metrics

    def invalidate(self) -> None:
        self._at = 0.0

    def _gather(self) -> list[GaugeMetricFamily]:
        out: list[GaugeMetricFamily] = []
        db_up = GaugeMetricFamily("tandem_database_up", "1 when the database answered.")
        try:
            out.extend(self._database())
            db_up.add_metric([], 1)
        except Exception as exc:  # a scrape must never fail because a dependency is down
            log.warning("metrics: database unavailable (%s)", type(exc).__name__)
            db_up.add_metric([], 0)
        out.append(db_up)
        out.extend(self._redis())
        return out

    def _database(self) -> list[GaugeMetricFamily]:
        from service.services.metrics import metrics_snapshot

        engine: Engine = self.app.extensions["tandem_engine"]
        now = datetime.now(UTC)
        depth = GaugeMetricFamily(
            "tandem_queue_depth", "Cases in the review queue.", labels=["task", "state"]
        )
        oldest = GaugeMetricFamily(
            "tandem_queue_oldest_pending_seconds",
            "Age of the oldest waiting case (0 when the queue is empty).",
            labels=["task"],
        )
        coverage = GaugeMetricFamily(
            "tandem_automation_coverage", "Certified automation coverage.", labels=["task"]
        )
        threshold = GaugeMetricFamily(
            "tandem_automation_threshold",
            "Confidence threshold for automatic answers (absent when none).",
            labels=["task"],
        )
        state = GaugeMetricFamily(
            "tandem_automation_state",
            "1 for the task's current automation state.",
            labels=["task", "state"],
        )
        bound = GaugeMetricFamily(
            "tandem_certified_error_bound", "Certified error upper bound.", labels=["task"]
        )
        live = GaugeMetricFamily(
            "tandem_live_error_estimate",
            "Error rate of audited automatic answers of the active model (live watch).",
            labels=["task"],
        )
        live_upper = GaugeMetricFamily(
            "tandem_live_error_upper",
            "Upper confidence bound of the live error (the alarm compares it to the target).",
            labels=["task"],
        )
        live_n = GaugeMetricFamily(
            "tandem_live_error_sample", "Audited automatic answers labelled.", labels=["task"]
        )
        training = GaugeMetricFamily(
            "tandem_training_jobs", "Training jobs by state.", labels=["task", "state"]
        )
        training_last = GaugeMetricFamily(
            "tandem_training_last_duration_seconds",
            "Run time of the task's latest finished training job.",
            labels=["task"],
        )
        webhooks = GaugeMetricFamily(
            "tandem_webhook_deliveries",
            "Webhook deliveries by status (failed = retries exhausted).",
            labels=["task", "status"],
        )
        webhook_retrying = GaugeMetricFamily(
            "tandem_webhook_deliveries_retrying",
            "Pending deliveries with at least one failed attempt.",
            labels=["task"],
        )
        outbox_pending = GaugeMetricFamily(
            "tandem_outbox_pending", "Jobs recorded but not yet pushed to Redis."
        )
        outbox_age = GaugeMetricFamily(
            "tandem_outbox_oldest_pending_seconds", "Age of the oldest unrelayed outbox entry."
        )
        # A read: on SQLite it must not queue for (or hold) the write lock while it scrapes.
        with Session(engine) as session:
            read_only(session)
            snapshot = metrics_snapshot(session)
        for t in snapshot.tasks:
            coverage.add_metric([t.name], float(t.coverage or 0.0))
            if t.threshold is not None:
                threshold.add_metric([t.name], float(t.threshold))
            if t.certified_error_bound is not None:
                bound.add_metric([t.name], float(t.certified_error_bound))
            for s in ("manual", "automating", "fallback"):
                state.add_metric([t.name, s], 1.0 if t.automation_state == s else 0.0)
            for s, n in t.queue.items():
                depth.add_metric([t.name, s], float(n))
            oldest.add_metric([t.name], _age(now, t.oldest_waiting))
            if t.live is not None:
                live_n.add_metric([t.name], float(t.live.n))
                if t.live.n:
                    live.add_metric([t.name], float(t.live.estimate))
                    live_upper.add_metric([t.name], float(t.live.upper))
        for name, s, n in snapshot.training_jobs:
            training.add_metric([name, s], float(n))
        for name, seconds in snapshot.training_last_seconds.items():
            training_last.add_metric([name], seconds)
        for name, s, n in snapshot.webhook_deliveries:
            webhooks.add_metric([name, s], float(n))
        for name, n in snapshot.webhooks_retrying.items():
            webhook_retrying.add_metric([name], float(n))
        outbox_pending.add_metric([], float(snapshot.outbox_pending))
        outbox_age.add_metric([], _age(now, snapshot.outbox_oldest))
        return [
            depth,
            oldest,
            coverage,
            threshold,
            state,
            bound,
            live,
            live_upper,
            live_n,
            training,
            training_last,
            webhooks,
            webhook_retrying,
            outbox_pending,
            outbox_age,
        ]

    def _redis(self) -> list[GaugeMetricFamily]:
        from rq.registry import FailedJobRegistry, StartedJobRegistry

        from service.redis_conn import get_redis

        up = GaugeMetricFamily("tandem_redis_up", "1 when Redis answered.")
        length = GaugeMetricFamily(
            "tandem_rq_queue_length", "Jobs waiting in each RQ queue.", labels=["queue"]
        )
        started = GaugeMetricFamily(
            "tandem_rq_started_jobs", "Jobs running now per RQ queue.", labels=["queue"]
        )
        failed = GaugeMetricFamily(
            "tandem_rq_failed_jobs", "Jobs in each queue's failed registry.", labels=["queue"]
        )
        try:
            redis = get_redis(self.app)
            for name in queues.ALL:
                queue = queues.rq_queue(name, redis)
                length.add_metric([name], float(queue.count))
                started.add_metric([name], float(StartedJobRegistry(queue=queue).count))
                failed.add_metric([name], float(FailedJobRegistry(queue=queue).count))
            up.add_metric([], 1)
            return [up, length, started, failed]
        except Exception as exc:
            log.warning("metrics: redis unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            return [up]


def _age(now: datetime, then: datetime | None) -> float:
    if then is None:
        return 0.0
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    return max(0.0, (now - then).total_seconds())


def metrics_payload(app: Flask) -> bytes:
    """This process's (or, in multiprocess mode, every process's) metrics plus the state."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        base = generate_latest(registry)
    else:
        base = generate_latest(REGISTRY)
    return base + generate_latest(app.extensions["tandem_state_registry"])


# ------------------------------------------------------------------------------- logs

#: Set by the job wrapper (workers.context) so a job's log lines carry its request id.
job_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "tandem_job_context", default=None
)

_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s'\"]+"),
    re.compile(r"tdm_[A-Za-z0-9_\-]{8,}"),
    re.compile(r"whsec_[A-Za-z0-9+/=]{8,}"),
)


def redact(text: str) -> str:
    """Mask bearer tokens and signing secrets that a careless message might contain."""
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[redacted]", text)
    return text


class ContextFilter(logging.Filter):
    """Adds ``request_id`` (and ``job_id`` in a job) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = None
        if has_request_context():
            rid = getattr(g, "request_id", None)
        ctx = job_context.get()
        if ctx:
            rid = rid or ctx.get("request_id")
            record.job_id = ctx.get("job_id")
        record.request_id = rid
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line; never includes arguments beyond the rendered message."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            "pid": record.process,
        }
        for key in ("request_id", "job_id"):
            value = getattr(record, key, None)
            if value:
                payload[key] = value
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(payload, ensure_ascii=False, default=str)


def configure_logging(
    level: int = logging.INFO, stream: Any = None, *, path: Path | None = None
) -> logging.Handler:
    """Route every logger through one JSON handler on the root logger (idempotent): to
    ``stream`` (standard error by default), or appended to the file at ``path``."""
    root = logging.getLogger()
    for existing in root.handlers:
        if getattr(existing, "_tandem_json", False):
            return existing
    handler: logging.Handler
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Watched: a log rotated by logrotate is reopened; every process appends whole lines.
        handler = logging.handlers.WatchedFileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    setattr(handler, "_tandem_json", True)  # noqa: B010 (a marker only this module reads)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


class TerminalFormatter(logging.Formatter):
    """One short readable line for a person at the terminal (embedded mode)."""

    def format(self, record: logging.LogRecord) -> str:
        # One line: the first of the message (RQ puts whole tracebacks into its messages);
        # the full record is in the log file.
        first = redact(record.getMessage()).strip().splitlines() or [""]
        line = f"tandem {record.levelname.lower()}: {first[0][:300]}"
        if record.exc_info:
            line += f" ({record.exc_info[0].__name__ if record.exc_info[0] else 'error'})"
        return line


def log_level_from_env() -> tuple[int, bool]:
    """(level, explicit): ``TANDEM_LOG_LEVEL`` (a level name) or INFO."""
    raw = os.environ.get("TANDEM_LOG_LEVEL", "").strip().upper()
    if not raw:
        return logging.INFO, False
    level = logging.getLevelName(raw)
    if not isinstance(level, int):
        raise ValueError(f"TANDEM_LOG_LEVEL must be a level name such as INFO, not {raw!r}")
    return level, True


def log_file(home: Path) -> Path:
    return home / "logs" / "tandem.log"


def configure_embedded_logging(home: Path, level: int) -> None:
    """Embedded mode keeps the terminal readable: the full JSON logs of every process (web,
    worker, scheduler) go to ``TANDEM_HOME/logs/tandem.log``; warnings and errors are also
    printed as one short line each. ``--verbose`` or ``TANDEM_LOG_LEVEL`` bring the JSON
    lines back to the terminal."""
    configure_logging(level, path=log_file(home))
    root = logging.getLogger()
    if any(getattr(h, "_tandem_terminal", False) for h in root.handlers):
        return
    terminal = logging.StreamHandler()
    terminal.setLevel(logging.WARNING)
    terminal.setFormatter(TerminalFormatter())
    setattr(terminal, "_tandem_terminal", True)  # noqa: B010
    root.addHandler(terminal)


# ----------------------------------------------------------------------------- wiring


def init_app(app: Flask) -> None:
    registry = CollectorRegistry(auto_describe=True)
    collector = StateCollector(app, ttl=float(os.environ.get("TANDEM_METRICS_CACHE_SECONDS", 10)))
    registry.register(collector)
    app.extensions["tandem_state_registry"] = registry
    app.extensions["tandem_state_collector"] = collector

    settings = app.config["TANDEM"]
    fmt = os.environ.get("TANDEM_LOG_FORMAT", "text" if settings.testing else "json")
    level, explicit = log_level_from_env()
    verbose = explicit or os.environ.get("TANDEM_VERBOSE", "") == "1"
    if fmt == "json" and settings.embedded and not verbose:
        configure_embedded_logging(settings.home, level)
    elif fmt == "json":
        configure_logging(level)

    @app.before_request
    def _start_timer() -> None:
        g._tandem_t0 = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        t0 = getattr(g, "_tandem_t0", None)
        if t0 is not None:
            rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
            REQUEST_LATENCY.labels(rule, request.method).observe(time.perf_counter() - t0)
            REQUESTS.labels(rule, request.method, str(response.status_code)).inc()
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        """Prometheus exposition (no authentication: bind it to the internal network)."""
        return Response(metrics_payload(app), headers={"Content-Type": CONTENT_TYPE_LATEST})
