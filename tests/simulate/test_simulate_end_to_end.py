"""A short `tandem simulate` end to end: an isolated instance (SQLite file + embedded Redis),
the real predict / review / training-job code on a real RQ worker, and the report files."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from click.testing import CliRunner

from tandem.cli import main

DATASETS = Path(__file__).resolve().parents[2] / "service" / "datasets"


def test_short_simulation_produces_an_honest_report(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    task = tmp_path / "task.json"
    task.write_text(
        json.dumps(
            {
                "name": "credit",
                "policy": {"min_labels": 40, "retrain_every": 40, "target_error": 0.15},
            }
        )
    )
    out = tmp_path / "out"
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
            "240",
            "--order",
            "shuffle",
            "--seed",
            "5",
            "--reviewer-error",
            "0.05",
            "--families",
            "logistic_regression",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in (
        "summary.json",
        "cases.csv",
        "report.html",
        "automation.png",
        "error.png",
        "labels.png",
        "versions.png",
    ):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 240 and summary["task"]["name"] == "credit"
    assert summary["task"]["policy"]["target_error"] == 0.15
    # the production trigger fired and real training jobs ran on the worker
    events = summary["audit_events"]
    assert events["training.requested"] >= 4 and events["model.trained"] >= 4
    assert summary["training_jobs"] >= 4 and len(summary["versions"]) >= 4
    assert events["case.reviewed"] == summary["human_labels"]
    tandem = summary["policies"]["tandem"]
    assert tandem["labels_spent"] == summary["human_labels"]
    # every case was either answered automatically or reviewed (audited ones: both)
    with (out / "cases.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 240 and sorted(int(r["row"]) for r in rows) == list(range(240))
    for r in rows:
        assert r["tandem_auto"] == "1" or r["human_label"] != ""
    assert tandem["auto_answers"] == sum(r["tandem_auto"] == "1" for r in rows)
    # the simulated reviewer was wrong sometimes, never about cases it did not see
    assert summary["reviewer_wrong_answers"] == sum(r["reviewer_wrong"] == "1" for r in rows)
    # nothing is automated before min_labels human labels
    first_auto = min((int(r["position"]) for r in rows if r["tandem_auto"] == "1"), default=240)
    assert first_auto >= 40
    # the baselines and the oracle are on the same stream
    oracle = summary["policies"]["oracle"]
    assert oracle["realised_error"] is None or oracle["realised_error"] <= 0.15
    for name in ("fixed", "naive"):
        assert (
            summary["policies"][name]["labels_spent"]
            == 240 - summary["policies"][name]["auto_answers"]
        )
    # the report is self-contained: images inline, no external assets
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert not re.search(r"""(src|href)=["']https?:""", page)
    assert "hindsight oracle" in page and "<style>" in page
