"""`tandem worker`: RQ workers started through the app."""

from __future__ import annotations

import logging
import os

from flask import Flask
from rq import Worker

from service import queues as queue_specs
from service.redis_conn import get_redis
from workers import context, schedule

log = logging.getLogger(__name__)


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
        worker = Worker(queues, connection=redis, serializer=queue_specs.SERIALIZER)
        return bool(worker.work(burst=burst, with_scheduler=True, logging_level="INFO"))
