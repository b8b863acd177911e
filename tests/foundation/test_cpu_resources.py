"""CPU discipline (service/resources.py): one math-library thread per process unless the
operator chose otherwise; training raises its own thread count and lowers its priority.
Run in fresh interpreters: the thread defaults only work before NumPy loads, and a raised
niceness cannot be undone in the test process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, os
import service  # sets the defaults before NumPy / OpenMP load
from threadpoolctl import threadpool_info
from service.resources import training_resources

def openmp_threads():
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]

import sklearn.ensemble  # loads OpenMP
before = {"env": os.environ.get("OMP_NUM_THREADS"), "omp": openmp_threads(), "nice": os.nice(0)}
with training_resources():
    during = {"omp": openmp_threads(), "nice": os.nice(0)}
print(json.dumps({"before": before, "during": during, "after": openmp_threads()}))
"""


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    clean = {k: v for k, v in clean.items() if not k.startswith("TANDEM_TRAINING_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_inference_one_thread_training_its_own_count_at_lower_priority() -> None:
    seen = _probe(TANDEM_TRAINING_THREADS="2", TANDEM_TRAINING_NICE="7")
    assert seen["before"]["env"] == "1"
    assert seen["before"]["omp"] and set(seen["before"]["omp"]) == {1}
    assert set(seen["during"]["omp"]) == {2}
    assert seen["during"]["nice"] == max(seen["before"]["nice"], 7)
    assert set(seen["after"]) == {1}  # the limit is lifted when training ends


def test_the_operators_thread_setting_wins() -> None:
    seen = _probe(OMP_NUM_THREADS="2", TANDEM_TRAINING_NICE="0")
    assert seen["before"]["env"] == "2"
    assert set(seen["before"]["omp"]) == {2}
    assert seen["during"]["nice"] == seen["before"]["nice"]
