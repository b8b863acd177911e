"""A job used by the observability tests (importable by dotted path for RQ)."""

from __future__ import annotations

import logging

from workers.context import job

log = logging.getLogger("tandem.test.job")


@job
def log_line(text: str) -> str:
    log.info("job says %s", text)
    return text
