"""`tandem worker`: RQ workers started through the app."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from flask import Flask
from redis.exceptions import RedisError
from rq import Queue, Worker
from rq.job import Job
from rq.worker import WorkerStatus

from service import queues as queue_specs
from service.redis_conn import get_redis
from workers import context, schedule

log = logging.getLogger(__name__)

#: A running job's heartbeat; a job whose heartbeat is this much overdue is abandoned.
JOB_HEARTBEAT_SECONDS = 10
HEARTBEAT_SLACK_SECONDS = 20
#: How often each worker looks for abandoned jobs (RQ's default is 10 minutes).
MAINTENANCE_SECONDS = 30
#: Queues whose jobs run in the worker process itself rather than in a work horse forked
#: per job. A webhook delivery is a few milliseconds of plain Python and one HTTP call under
#: its own timeouts; forking the worker (which has the whole app and ML stack loaded) cost
#: it ~0.1-0.2 s every time, and the fork threw away what the next delivery could reuse
#: (the HTTP connection pool and TLS context, the database pool, SQLAlchemy's compiled
#: statements): bench/README.md, "Webhooks". Training, exports and maintenance keep their
#: work horse: training changes process state (thread counts, nice level), training and
#: exports allocate hundreds of MB and run native code for minutes, so a crash or a leak
#: there must not take the worker with it.
IN_PROCESS_QUEUES = frozenset({queue_specs.WEBHOOKS.name})


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

    @property
    def dequeue_timeout(self) -> int:
        """How long an idle worker blocks waiting for a job. RQ sweeps only between two
        waits, and waits up to 405 s: a worker of a quiet queue (a dedicated webhooks worker)
        found the job of a killed worker minutes late. Now it wakes every sweep interval."""
        return MAINTENANCE_SECONDS

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Jobs of IN_PROCESS_QUEUES run here, as RQ's SimpleWorker runs every job; the rest
        in a forked work horse, as RQ's Worker does.

        What crash isolation means for an in-process job: its timeout still applies (RQ's
        SIGALRM death penalty raises in the job); an exception fails it and RQ retries it
        as before; a process that dies mid-job (``kill -9``, OOM) is the worker itself, and
        the job, no longer heartbeating, is swept as abandoned within a minute by any live
        worker and retried (the delivery is at-least-once, the same ``webhook-id``).
        """
        if job.origin not in IN_PROCESS_QUEUES:
            super().execute_job(job, queue)
            return
        execution = self.prepare_execution(job)
        # Nobody watches an in-process job from outside, so beat from a thread as the
        # forked worker's monitor loop would: a slow receiver is not mistaken for a dead
        # worker, and a dead worker's job still lapses 30 s after its last beat.
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.job_monitoring_interval):
                try:
                    self.maintain_heartbeats(job, execution)
                except RedisError as exc:
                    log.warning("job heartbeat failed: %s", type(exc).__name__)

        beater = threading.Thread(target=beat, name="tandem-job-heartbeat", daemon=True)
        beater.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            beater.join()
        self.set_state(WorkerStatus.IDLE)


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
