"""Jobs in Redis are JSON, never pickles: nothing read back from Redis can execute code."""

from __future__ import annotations

import json
import zlib

from service.db import transaction
from service.queues import TRAINING
from service.redis_conn import get_redis
from service.services import outbox


def test_outbox_relays_json_payloads(app, redis_conn):
    with transaction() as session:
        outbox.defer(session, "workers.jobs.training.train_task", queue=TRAINING,
                     job_id="train-task-424242", task_id=424242)
    with transaction() as session:
        assert outbox.relay(session, get_redis()) == 1
    raw = redis_conn.hget("rq:job:train-task-424242", "data")
    payload = json.loads(zlib.decompress(raw))
    assert payload[0] == "workers.jobs.training.train_task"
    assert payload[3] == {"task_id": 424242}
    # a second relay of the same deterministic id does not start a second job
    with transaction() as session:
        outbox.defer(session, "workers.jobs.training.train_task", queue=TRAINING,
                     job_id="train-task-424242", task_id=424242)
    with transaction() as session:
        outbox.relay(session, get_redis())
    assert redis_conn.lrange("rq:queue:training", 0, -1) == [b"train-task-424242"]
