"""End to end on an easy synthetic stream: the replay certifies, automates, audits automatic
answers, and the recorded truth shows the promise kept (realised and true error)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from tandem.simulate.data import load_dataset
from tandem.simulate.engine import SimOptions
from tandem.simulate.seeds import run_one


def _easy_csv(path: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["signal", "colour", "label"])
        for _ in range(n):
            positive = rng.random() < 0.5
            margin = 1.0 + abs(rng.normal())
            w.writerow(
                [
                    f"{margin if positive else -margin:.4f}",
                    rng.choice(["red", "blue", "NA"]),
                    "pos" if positive else "neg",
                ]
            )


def test_replay_automates_and_keeps_the_promise(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    data = tmp_path / "easy.csv"
    _easy_csv(data, 800)
    # max_coverage_step 1.0: no widening cap, so a few hundred cases can show automation; a
    # cold-start audit rate of 0.5 brings the first checkpoint (300 ledger cases at α = 0.1)
    # at ~600 cases instead of ~1,000
    task = {
        "policy": {
            "min_labels": 50,
            "retrain_every": 50,
            "target_error": 0.1,
            "max_coverage_step": 1.0,
            "cold_start_audit_rate": 0.5,
        }
    }
    dataset = load_dataset(data, "label", task=task)
    assert [f["type"] for f in dataset.fields] == ["number", "category"]
    out = tmp_path / "out"
    summary = run_one(
        dataset,
        SimOptions(seed=1, order="shuffle", families="logistic_regression", progress=False),
        out,
    )
    tandem = summary["policies"]["tandem"]
    assert tandem["auto_answers"] > 50, summary["versions"]
    assert tandem["realised_error"] is not None and tandem["realised_error"] <= 0.1
    assert tandem["deployed_rules"] >= 1 and not tandem["deployed_exceeded"]
    assert summary["audit_events"].get("model.certified", 0) >= 1
    assert any(v["certified"] for v in summary["versions"])
    states = [r["state"] for r in summary["timeline"]]
    assert states[0] == "manual" and "automating" in states
    # automatic answers were audited at the audit rate and reviewed: labels < cases
    assert summary["human_labels"] < summary["rows"]
    with (out / "cases.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    audited_auto = [r for r in rows if r["tandem_auto"] == "1" and r["audit"] == "1"]
    assert audited_auto and all(r["human_label"] for r in audited_auto)
    assert all(
        r["human_label"] == "" for r in rows if r["tandem_auto"] == "1" and r["audit"] == "0"
    )
    json.dumps(summary)
