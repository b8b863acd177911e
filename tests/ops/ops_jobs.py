"""A job used by the observability tests (importable by dotted path for RQ)."""

from __future__ import annotations

import logging

from workers.context import job

log = logging.getLogger("tandem.test.job")


@job
def log_line(text: str) -> str:
    log.info("job says %s", text)
    return text


@job
def stall_once(marker: str) -> str:
    """The first run leaves a marker and then hangs (to be killed with its worker); a retry
    sees the marker and finishes at once."""
    import os
    import time

    if not os.path.exists(marker):
        with open(marker, "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(600)
    return "done"
