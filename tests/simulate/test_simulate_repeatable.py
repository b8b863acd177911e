"""Replays are repeatable: the same seed gives the same case ids, hence the same audit draws,
the same trainings and the same report; trainings on identical cases can be reused across
replays (``--cache``). Why it matters: policies compared on one seed share their audit
sample, so their paired difference is the policies' and not the lottery's (docs/backtest.md).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from service.ml import pipeline
from service.models import id_source, new_id, seeded_ids
from tandem.cli import main
from tandem.simulate.cache import FolderCache

DATASETS = Path(__file__).resolve().parents[2] / "service" / "datasets"


def test_seeded_ids_repeat_per_seed_and_stay_time_ordered() -> None:
    first = seeded_ids(3)
    again = seeded_ids(3)
    other = seeded_ids(4)
    a = [first() for _ in range(500)]
    assert a == [again() for _ in range(500)]
    assert a != [other() for _ in range(500)]
    assert a == sorted(a) and len(set(a)) == 500
    assert all(len(x) == 32 and x[12] == "7" for x in a)  # UUIDv7 layout, version nibble
    with id_source(seeded_ids(3)):
        assert new_id() == a[0]
    assert new_id() != a[0]  # outside the block: fresh ids again


def _tiny_training() -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]]]:
    rng = np.random.default_rng(0)
    rows = [{"x": float(v), "k": "a" if v > 0 else "b"} for v in rng.normal(size=120)]
    labels = ["yes" if r["x"] + rng.normal(scale=0.5) > 0 else "no" for r in rows]
    fields = [{"name": "x", "type": "number"}, {"name": "k", "type": "category"}]
    return rows, labels, fields


def test_training_cache_returns_the_same_model_without_training_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, labels, fields = _tiny_training()
    calls: list[int] = []
    real = pipeline._train_model

    def counted(*args: Any, **kwargs: Any) -> pipeline.TrainedModel:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_train_model", counted)
    kwargs = {"families": ("logistic_regression",)}
    with pipeline.training_store(FolderCache(tmp_path)):
        first = pipeline.train_model(rows, labels, fields, ["no", "yes"], **kwargs)
        second = pipeline.train_model(rows, labels, fields, ["no", "yes"], **kwargs)
        assert len(calls) == 1 and len(list(tmp_path.glob("*.joblib"))) == 1
        np.testing.assert_array_equal(first.oof_proba, second.oof_proba)
        probe = pipeline.pipeline_proba(second.pipeline, rows[:10], fields, ["no", "yes"])
        np.testing.assert_array_equal(
            pipeline.pipeline_proba(first.pipeline, rows[:10], fields, ["no", "yes"]), probe
        )
        # One label changed: another training, another file.
        flipped = ["no" if labels[0] == "yes" else "yes", *labels[1:]]
        pipeline.train_model(rows, flipped, fields, ["no", "yes"], **kwargs)
        assert len(calls) == 2 and len(list(tmp_path.glob("*.joblib"))) == 2
    pipeline.train_model(rows, labels, fields, ["no", "yes"], **kwargs)
    assert len(calls) == 3  # outside the block nothing is reused


def _replay(out: Path, cache: Path, task: Path) -> list[dict[str, str]]:
    result = CliRunner().invoke(
        main,
        [
            "simulate",
            str(DATASETS / "credit_data.csv"),
            "--label",
            "Status",
            "--task",
            str(task),
            "--rows",
            "200",
            "--order",
            "shuffle",
            "--seed",
            "7",
            "--families",
            "logistic_regression",
            "--cache",
            str(cache),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    with (out / "cases.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_two_replays_with_one_seed_audit_the_same_cases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    task = tmp_path / "task.json"
    task.write_text(
        json.dumps({"name": "credit", "policy": {"min_labels": 40, "retrain_every": 40}})
    )
    cache = tmp_path / "cache"
    first = _replay(tmp_path / "a", cache, task)
    trainings = sorted(p.name for p in cache.glob("*.joblib"))
    second = _replay(tmp_path / "b", cache, task)
    assert trainings, "the replay trained no model"
    # Same arrivals, same audit draws, same versions and suggestions.
    keys = ("row", "audit", "route", "reason", "model_version", "suggestion", "confidence")
    assert [{k: r[k] for k in keys} for r in first] == [{k: r[k] for k in keys} for r in second]
    assert any(r["audit"] == "1" for r in first) and any(r["model_version"] for r in first)
    # The second replay trained nothing new: every training came from the cache.
    assert sorted(p.name for p in cache.glob("*.joblib")) == trainings
