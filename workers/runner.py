"""`tandem worker`: RQ workers started through the app."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask
from rq import Worker

from service import queues as queue_specs
from service.redis_conn import get_redis
from workers import context, schedule

log = logging.getLogger(__name__)

#: A running job's heartbeat; a job whose heartbeat is this much overdue is abandoned.
JOB_HEARTBEAT_SECONDS = 10
HEARTBEAT_SLACK_SECONDS = 20
#: How often each worker looks for abandoned jobs (RQ's default is 10 minutes).
MAINTENANCE_SECONDS = 30


class TandemWorker(Worker):
    """RQ's worker, finding dead work within a minute instead of ten.

    A job whose worker was killed (``kill -9``, a lost machine) stays "started" until its
    heartbeat expires and some worker's maintenance sweeps RQ's started-job registry; RQ's
    retry then runs it again. RQ's defaults (30 s heartbeat + 60 s slack, a sweep every
    10 minutes) left a dead training job "started" for 10.5 minutes; here the heartbeat
    expires 30 s after the last beat and every worker sweeps every 30 s.
    """

    def get_heartbeat_ttl(self, job: Any, working_time: float = 0.0) -> int:
        ttl = super().get_heartbeat_ttl(job, working_time)
        return int(ttl) - 60 + HEARTBEAT_SLACK_SECONDS


def run_worker(
    app: Flask,
    queue_names: list[str] | None = None,
    *,
    burst: bool = False,
    with_scheduler: bool = True,
) -> bool:
    names = queue_names or list(queue_specs.DEFAULT_WORKER_QUEUES)
    unknown = [n for n in names if n not in queue_specs.ALL]
    if unknown:
        raise ValueError(f"unknown queue(s): {', '.join(unknown)}")
    context.set_app(app)
    # Every process this worker forks from here on dies with it (workers/schedule.py says why).
    os.register_at_fork(after_in_child=schedule.die_with_parent)
    redis = get_redis(app)
    with app.app_context():
        queues = [queue_specs.rq_queue(n, redis) for n in names]
        if with_scheduler and not burst:
            schedule.start_cron_in_background(app)
        worker = TandemWorker(
            queues,
            connection=redis,
            serializer=queue_specs.SERIALIZER,
            job_monitoring_interval=JOB_HEARTBEAT_SECONDS,
            maintenance_interval=MAINTENANCE_SECONDS,
        )
        return bool(worker.work(burst=burst, with_scheduler=True, logging_level="INFO"))
