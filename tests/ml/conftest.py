"""Shared fixtures for the pure ML tests: datasets and small fitted pipelines (session-wide)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# `service` is not installed in the venv; make the repo root importable for these tests.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from service.ml.datasets import Dataset, load_dataset  # noqa: E402
from service.ml.frame import rows_to_frame  # noqa: E402
from service.ml.pipeline import FAMILIES, build_pipeline  # noqa: E402

DATASETS = ("credit_data", "fine_foods", "letter")
TRAIN_ROWS = 1500


@pytest.fixture(scope="session")
def datasets() -> dict[str, Dataset]:
    return {name: load_dataset(name) for name in DATASETS}


@pytest.fixture(scope="session")
def fitted(datasets):
    """(dataset, family) -> pipeline fitted on the first TRAIN_ROWS rows (HGB: 10 iters)."""
    out = {}
    for name, d in datasets.items():
        for family in FAMILIES:
            pipe = build_pipeline(d.fields, family, hgb_max_iter=10, n_rows=TRAIN_ROWS)
            pipe.fit(rows_to_frame(d.rows[:TRAIN_ROWS], d.fields), d.labels[:TRAIN_ROWS])
            out[name, family] = pipe
    return out
