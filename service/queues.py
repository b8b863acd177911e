"""Named queues and their limits. Shared by the library (which enqueues by dotted path
through the outbox) and the workers (which consume); the library never imports the workers
(an import contract, docs/architecture.md)."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

SERIALIZER = JSONSerializer


@dataclass(frozen=True)
class QueueSpec:
    name: str
    job_timeout: int  # seconds before RQ kills a job
    max_retries: int
    retry_intervals: tuple[int, ...]
    result_ttl: int = 86_400  # seconds RQ keeps a finished job and its result; 0: none


TRAINING = QueueSpec("training", job_timeout=3600, max_retries=3, retry_intervals=(10, 60, 300))
WEBHOOKS = QueueSpec(
    "webhooks",
    job_timeout=60,
    max_retries=8,
    retry_intervals=(5, 30, 120, 600, 1800, 3600, 7200, 14400),
    # The delivery row is the record; a kept job and result stream cost Redis ~6 KB a
    # delivery for a day (~11 GB at 20 deliveries/s) and a few writes each.
    result_ttl=0,
)
EXPORTS = QueueSpec("exports", job_timeout=3600, max_retries=2, retry_intervals=(30, 300))
MAINTENANCE = QueueSpec("maintenance", job_timeout=300, max_retries=2, retry_intervals=(10, 60))

ALL = {q.name: q for q in (TRAINING, WEBHOOKS, EXPORTS, MAINTENANCE)}
DEFAULT_WORKER_QUEUES = ("training", "webhooks", "exports", "maintenance")


def rq_queue(name: str, connection: Redis) -> Queue:
    """Every queue speaks JSON: job payloads in Redis are ids and plain values, never
    pickles, so nothing read back from Redis can execute code."""
    return Queue(name, connection=connection, serializer=SERIALIZER)
