"""Periodic housekeeping (run by the cron leader, see workers.schedule): each job is one unit
of work around one service function."""

from __future__ import annotations

from typing import Any

from service.redis_conn import get_redis
from service.services import automation, review, training, webhooks
from service.uow import relay_pending, unit_of_work
from workers.context import job


@job
def relay_outbox() -> int:
    """Enqueue work recorded while Redis was unreachable (or whose relay raced a crash)."""
    return relay_pending()


@job
def expire_leases() -> int:
    """Return cases whose lease ran out to the queue, so no case waits on an absent reviewer."""
    with unit_of_work() as session:
        return review.expire_leases(session)


@job
def redeliver_webhooks() -> int:
    """Re-queue pending deliveries whose job was lost (e.g. Redis flushed)."""
    with unit_of_work() as session:
        return webhooks.redeliver_stuck(session)


@job
def retrain_check() -> list[str]:
    """Periodic retrain trigger (docs/learning.md)."""
    with unit_of_work() as session:
        return training.retrain_due(session, get_redis())


@job
def drift_check() -> dict[str, Any]:
    """Label-free drift check of every task with an active model (docs/policy.md)."""
    with unit_of_work() as session:
        return automation.drift_check_all(session)
