"""Jobs in Redis are JSON, never pickles: nothing read back from Redis can execute code."""

from __future__ import annotations

import json
import zlib

from service.models import OutboxEntry
from service.queues import TRAINING
from service.redis_conn import get_redis
from service.services import outbox
from service.uow import unit_of_work


def record(job_id: str, task_id: int) -> OutboxEntry:
    """Record a training job and commit without the unit of work's push after commit: these
    tests drive the relay themselves."""
    from service.db import db_session

    session = db_session()
    entry = outbox.defer(
        session, "workers.jobs.training.train_task", queue=TRAINING, job_id=job_id, task_id=task_id
    )
    session.commit()
    session.info.pop(outbox.RECORDED)
    return entry


def test_outbox_relays_json_payloads(app, redis_conn):
    record("train-task-424242", 424242)
    with unit_of_work() as session:
        assert outbox.relay(session, get_redis()) == 1
    raw = redis_conn.hget("rq:job:train-task-424242", "data")
    payload = json.loads(zlib.decompress(raw))
    assert payload[0] == "workers.jobs.training.train_task"
    assert payload[3] == {"task_id": 424242}
    # A second request with the same deterministic id never runs beside the first: it waits
    # while the first is live, and is sent once it is done (before, it was marked sent and
    # dropped: a training request answered 202 and never ran — issue #16).
    second_id = record("train-task-424242", 424242).id
    with unit_of_work() as session:
        assert outbox.relay(session, get_redis()) == 0
    assert redis_conn.lrange("rq:queue:training", 0, -1) == [b"train-task-424242"]
    with unit_of_work() as session:
        assert session.get(OutboxEntry, second_id).enqueued_at is None
    from rq.job import Job

    from service.queues import SERIALIZER

    first = Job.fetch("train-task-424242", connection=redis_conn, serializer=SERIALIZER)
    redis_conn.lrem("rq:queue:training", 0, "train-task-424242")
    first.set_status("finished")  # the first run is over
    with unit_of_work() as session:
        assert outbox.relay(session, get_redis()) == 1
        assert session.get(OutboxEntry, second_id).enqueued_at is not None
    assert redis_conn.lrange("rq:queue:training", 0, -1) == [b"train-task-424242"]


def test_a_relay_whose_commit_was_lost_does_not_enqueue_twice(app, redis_conn):
    entry = record("train-task-515151", 515151)
    with unit_of_work() as session:
        assert outbox.relay(session, get_redis()) == 1
        session.get(OutboxEntry, entry.id).enqueued_at = None  # as if that commit was lost
    with unit_of_work() as session:
        assert outbox.relay(session, get_redis()) == 1  # marked sent, not sent again
    assert redis_conn.lrange("rq:queue:training", 0, -1) == [b"train-task-515151"]
