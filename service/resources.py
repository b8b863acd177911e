"""CPU discipline for model work that shares cores with the predict path.

Measured (bench/training.py, 2 cores): with OpenMP's defaults a 100,000-case training run
beside the web process took single-case predict p99 from 29 ms to 7.4 s. Two causes, two
rules:

* Inference runs one OpenMP/BLAS thread per process. A one-row prediction gains nothing
  from a thread team, and a team that spins at its barrier while another process holds a
  core turns microseconds into scheduler time slices. Web concurrency comes from processes
  (web worker processes), not from threads inside a prediction. :func:`inference_thread_defaults`
  sets the environment before NumPy/OpenMP load; an operator's explicit setting wins.
* Training raises its own thread count (``TANDEM_TRAINING_THREADS``, default: every core)
  and runs at a lower CPU priority (``TANDEM_TRAINING_NICE``, default 10), so the kernel
  gives a core back to a predict request the moment one arrives.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
DEFAULT_TRAINING_NICE = 10


def inference_thread_defaults() -> None:
    """One math-library thread per process unless the operator chose otherwise."""
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, "1")


def training_threads() -> int:
    raw = os.environ.get("TANDEM_TRAINING_THREADS", "")
    if raw.strip():
        return max(1, int(raw))
    return max(1, os.cpu_count() or 1)


def training_niceness() -> int:
    raw = os.environ.get("TANDEM_TRAINING_NICE", "")
    return max(0, int(raw)) if raw.strip() else DEFAULT_TRAINING_NICE


def lower_priority(niceness: int) -> None:
    """Raise the calling thread's niceness to at least ``niceness`` (never lowers it back).

    On Linux this affects the calling thread only: the forked RQ work horse, or the worker
    thread of the embedded mode, never the web threads.
    """
    if niceness <= 0 or not hasattr(os, "nice"):
        return
    current = os.nice(0)
    if current < niceness:
        os.nice(niceness - current)


@contextmanager
def training_resources() -> Iterator[None]:
    """Run model training with its own thread count, at background priority."""
    from threadpoolctl import threadpool_limits

    lower_priority(training_niceness())
    with threadpool_limits(limits=training_threads()):
        yield
