"""Periodic work through RQ's cron scheduler, with one leader across all worker machines.

Every `tandem worker` may start the scheduler process; a Redis lock makes exactly one of
them enqueue the periodic jobs at a time, and another takes over within a minute if that
machine dies. The jobs themselves are idempotent, so a rare double run is harmless.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

from flask import Flask
from redis import Redis
from redis.exceptions import LockError, RedisError
from rq.cron import CronScheduler
from rq.utils import now as now_utc

from service import queues
from service.redis_conn import redis_url_for

log = logging.getLogger(__name__)

LEADER_LOCK = "tandem:cron-leader"
LEADER_TTL_SECONDS = 60
#: How often the scheduler looks at least whether to stop (signal, parent gone).
PARENT_CHECK_SECONDS = 5.0

# (dotted path, queue, interval seconds): the product's periodic work.
PERIODIC_JOBS: tuple[tuple[str, str, int], ...] = (
    ("workers.jobs.maintenance.relay_outbox", queues.MAINTENANCE.name, 15),
    ("workers.jobs.maintenance.expire_leases", queues.MAINTENANCE.name, 30),
    ("workers.jobs.maintenance.redeliver_webhooks", queues.MAINTENANCE.name, 60),
    ("workers.jobs.maintenance.retrain_check", queues.MAINTENANCE.name, 600),
    ("workers.jobs.maintenance.drift_check", queues.MAINTENANCE.name, 300),
)


def _resolve(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


def build_scheduler(redis: Redis) -> CronScheduler:
    scheduler = CronScheduler(connection=redis, name=f"tandem-cron-{os.getpid()}")
    for path, queue_name, interval in PERIODIC_JOBS:
        scheduler.register(
            _resolve(path),
            queue_name,
            interval=interval,
            job_timeout=queues.ALL[queue_name].job_timeout,
            result_ttl=600,
            failure_ttl=86_400,
            name=path.rsplit(".", 1)[-1],
        )
    return scheduler


def enqueue_due(scheduler: CronScheduler, redis: Redis) -> list[Any]:
    """RQ's own ``enqueue_jobs`` uses the pickle serializer; ours enqueues the due jobs with
    the JSON one every queue and worker of Tandem uses, keeping RQ's timing logic."""
    due = []
    for cron_job in scheduler.get_jobs():
        if cron_job.func is not None and cron_job.should_run():
            queue = queues.rq_queue(cron_job.queue_name, redis)
            queue.enqueue(
                cron_job.func, args=cron_job.args, kwargs=cron_job.kwargs, **cron_job.job_options
            )
            cron_job.set_enqueue_time(now_utc())
            due.append(cron_job)
    return due


def run_leader_loop(
    redis: Redis, stop_after: float | None = None, parent_pid: int | None = None
) -> None:
    """Hold the leader lock and enqueue due jobs; step down and retry if the lock is lost.

    Stops at SIGTERM/SIGINT within moments (an event, not a sleep, is waited on), and by
    itself when ``parent_pid`` (the worker that started it) is gone: a worker killed with
    SIGKILL must not leave a scheduler behind that holds the leader lock."""
    stop = threading.Event()

    def _stop(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started = time.monotonic()

    def done() -> bool:
        if parent_pid is not None and os.getppid() != parent_pid:
            log.warning("cron scheduler: its worker (pid %s) is gone; stopping", parent_pid)
            stop.set()
        if stop_after is not None and time.monotonic() - started > stop_after:
            stop.set()
        return stop.is_set()

    while not done():
        try:
            lock = redis.lock(LEADER_LOCK, timeout=LEADER_TTL_SECONDS, blocking=False)
            if not lock.acquire(blocking=False):
                stop.wait(PARENT_CHECK_SECONDS)
                continue
            scheduler = build_scheduler(redis)
            scheduler.register_birth()
            try:
                while not done():
                    if enqueue_due(scheduler, redis):
                        scheduler.save()
                    scheduler.heartbeat()
                    lock.extend(LEADER_TTL_SECONDS, replace_ttl=True)
                    interval = max(
                        1.0, min(PARENT_CHECK_SECONDS, scheduler.calculate_sleep_interval())
                    )
                    stop.wait(interval)
            finally:
                scheduler.register_death()
                try:
                    lock.release()
                except LockError:
                    pass
        except (RedisError, LockError) as exc:
            log.warning("cron scheduler paused: %s", type(exc).__name__)
            stop.wait(PARENT_CHECK_SECONDS)


def _child(url: str, parent_pid: int) -> None:
    run_leader_loop(Redis.from_url(url), parent_pid=parent_pid)


def die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM to this process when its parent dies.

    Called in every child a worker forks (its scheduler processes, RQ's and ours, and the
    job's work horse): a worker killed with SIGKILL leaves nothing behind — no scheduler
    holding a leader lock, no job running on that nobody watches (RQ then treats it as
    abandoned and its retry runs it again). Elsewhere the scheduler's own parent check
    stops it within PARENT_CHECK_SECONDS."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def start_cron_in_background(app: Flask) -> BaseProcess:
    """A separate process: the scheduler loop must not share the worker's signal handling."""
    ctx = multiprocessing.get_context("fork")
    process = ctx.Process(
        target=_child, args=(redis_url_for(app), os.getpid()), name="tandem-cron", daemon=True
    )
    process.start()
    return process
