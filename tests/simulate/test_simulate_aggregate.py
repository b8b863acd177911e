"""The table across seeds: shares of runs that broke the promise, mean automation."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from tandem.simulate.seeds import aggregate, combine, table_markdown


def _policy(exceeded: bool, deployed: bool | None, auto: float, fq: float, share: float | None):
    return {
        "realised_exceeded": exceeded,
        "deployed_exceeded": deployed,
        "deployed_breaches": int(bool(deployed)),
        "deployed_rules": 2,
        "automation": auto,
        "final_quarter_automation": fq,
        "final_quarter_share_of_oracle": share,
        "realised_error": 0.01,
        "labels_spent": 100,
    }


def _summary(tandem_bad: bool) -> dict[str, Any]:
    return {
        "policies": {
            "tandem": _policy(tandem_bad, False, 0.4, 0.6, 0.75),
            "fixed": _policy(True, True, 0.5, 0.5, 0.625),
            "naive": _policy(False, True, 0.7, 0.8, 1.0),
            "oracle": _policy(False, None, 0.6, 0.8, 1.0),
        }
    }


def test_aggregate_counts_runs_and_averages() -> None:
    table = aggregate([_summary(False), _summary(True), _summary(False), _summary(False)])
    assert table["tandem"]["realised_exceeded_share"] == 0.25
    assert table["tandem"]["deployed_exceeded_share"] == 0.0
    assert table["fixed"]["deployed_exceeded_share"] == 1.0
    assert table["fixed"]["deployed_breaches_total"] == 4
    assert table["oracle"]["deployed_exceeded_share"] is None
    assert table["tandem"]["mean_final_quarter_share_of_oracle"] == 0.75
    md = table_markdown(table, 0.02)
    policy_table = md.split("\n\n")[0]
    assert policy_table.count("\n| ") == 4  # one row per policy under the header
    assert "| Tandem (certified) | 25% | 0% (0/8 rules) |" in md


def _timeline(first_auto_at: int | None, frozen_at: tuple[int, ...] = ()) -> list[dict]:
    """Chunks of 50 cases, one human label per case until automation starts."""
    rows = []
    for position in range(0, 1000, 50):
        automating = first_auto_at is not None and position >= first_auto_at
        rows.append(
            {
                "position": position,
                "state": "automating" if automating else "manual",
                "human_labels": position,
                "frozen": position in frozen_at,
            }
        )
    return rows


def test_run_by_run_spread_first_automation_and_drift_warnings() -> None:
    runs = [
        {**_summary(False), "timeline": _timeline(300)},
        {**_summary(False), "timeline": _timeline(500, frozen_at=(600, 650, 800))},
        {**_summary(False), "timeline": _timeline(None), "fallbacks": 2},
    ]
    runs[1]["policies"]["tandem"]["final_quarter_share_of_oracle"] = 0.5
    runs[2]["policies"]["tandem"]["final_quarter_share_of_oracle"] = 0.0
    spread = aggregate(runs)["tandem_spread"]
    assert (spread["share_of_oracle_min"], spread["share_of_oracle_max"]) == (0.0, 0.75)
    assert spread["share_of_oracle_median"] == 0.5
    assert spread["labels_before_first_automation_median"] == 400  # of 300 and 500
    assert spread["runs_never_automated"] == 1
    # two separate freezes (600–650 is one warning, 800 another) in one run of three
    assert spread["drift_warnings_per_run"] == pytest.approx(2 / 3)
    assert spread["runs_with_a_drift_warning"] == 1
    assert spread["fallbacks_per_run"] == pytest.approx(2 / 3)
    assert spread["runs_with_a_fallback"] == 1
    md = table_markdown(aggregate(runs), 0.1)
    assert "| final quarter, share of oracle: min / median / max | 0% / 50% / 75% |" in md
    assert "| 400; never automated in 1 of 3 runs |" in md


def _write_run(folder: Path, seed: int, *, tandem_bad: bool = False, **overrides: Any) -> None:
    summary = {
        **_summary(tandem_bad),
        "dataset": "/somewhere/credit_data.csv",
        "label_column": "Status",
        "rows": 4454,
        "seed": seed,
        "target_error": 0.1,
        "confidence": 0.95,
        "reviewer_error": 0.0,
        "chunk": 50,
        "knobs": {"hgb_max_iter": 50, "families": None},
        "task": {"policy": {"target_error": 0.1}},
        "elapsed_seconds": 100.0,
        **overrides,
    }
    (folder / f"seed-{seed}").mkdir(parents=True)
    (folder / f"seed-{seed}" / "summary.json").write_text(json.dumps(summary))


def test_combine_merges_seed_folders_split_across_machines(tmp_path: Path) -> None:
    here, there = tmp_path / "here", tmp_path / "there"
    _write_run(here, 0)
    _write_run(here, 1, tandem_bad=True)
    _write_run(there, 10, dataset="/elsewhere/credit_data.csv")  # same file, other machine
    _write_run(there, 11)
    archived = there / "seed-11" / "summary.json"  # an archived run is gzipped
    archived.with_suffix(".json.gz").write_bytes(gzip.compress(archived.read_bytes()))
    archived.unlink()
    summaries, table, md = combine([there, here], tmp_path / "all")
    assert [s["seed"] for s in summaries] == [0, 1, 10, 11]
    assert table["tandem"]["runs"] == 4
    assert table["tandem"]["realised_exceeded_share"] == 0.25
    written = json.loads((tmp_path / "all" / "seeds.json").read_text())
    assert written["seeds"] == [0, 1, 10, 11]
    assert written["elapsed_seconds"] == 400.0
    assert (tmp_path / "all" / "seeds.md").read_text().strip() == md.strip()


def test_combine_refuses_runs_that_differ_in_more_than_the_seed(tmp_path: Path) -> None:
    _write_run(tmp_path / "a", 0)
    _write_run(tmp_path / "b", 1, target_error=0.05)
    with pytest.raises(ValueError, match="target_error"):
        combine([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert not (tmp_path / "out" / "seeds.json").exists()


def test_combine_refuses_a_seed_counted_twice(tmp_path: Path) -> None:
    _write_run(tmp_path / "a", 3)
    _write_run(tmp_path / "b", 3)
    with pytest.raises(ValueError, match=r"seed\(s\) \[3\]"):
        combine([tmp_path / "a", tmp_path / "b"], tmp_path / "out")


def test_simulate_table_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tandem.cli import main

    _write_run(tmp_path / "a", 0)
    _write_run(tmp_path / "b", 1)
    ok = CliRunner().invoke(
        main,
        [
            "simulate-table",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            "--out",
            str(tmp_path / "all"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "| Tandem (certified) |" in ok.output
    _write_run(tmp_path / "c", 2, label_column="Other")
    bad = CliRunner().invoke(
        main,
        ["simulate-table", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "x")],
    )
    assert bad.exit_code == 1
    assert "label_column" in bad.output


def _arm(folder: Path, shares: dict[int, float], *, task: dict[str, Any]) -> None:
    for seed, share in shares.items():
        _write_run(folder, seed, task=task)
        path = folder / f"seed-{seed}" / "summary.json"
        summary = json.loads(path.read_text())
        summary["policies"]["tandem"]["final_quarter_share_of_oracle"] = share
        summary["timeline"] = _timeline(300 if share > 0 else None)
        summary["versions"] = [
            {"version": 1, "checkpoints": [1], "certified": False},
            {"version": 2, "checkpoints": [2, 3], "certified": share > 0},
        ]
        path.write_text(json.dumps(summary))


def test_compare_pairs_runs_by_seed_and_judges_the_difference(tmp_path: Path) -> None:
    from tandem.simulate.compare import compare, compare_markdown

    base_task = {"policy": {"target_error": 0.1}}
    change_task = {"policy": {"target_error": 0.1, "cold_start_audit_rate": 0.5}}
    _arm(tmp_path / "a", {0: 0.5, 1: 0.6, 2: 0.0, 3: 0.7, 9: 0.9}, task=base_task)
    _arm(tmp_path / "b", {0: 0.7, 1: 0.75, 2: 0.3, 3: 0.8, 8: 0.1}, task=change_task)
    result = compare([tmp_path / "a"], [tmp_path / "b"])
    assert result["seeds"] == [0, 1, 2, 3]
    assert result["unpaired_seeds"] == [8, 9]
    d = result["share_of_oracle"]
    assert d["pairs"] == 4
    assert d["mean"] == pytest.approx((0.2 + 0.15 + 0.3 + 0.1) / 4)
    assert d["verdict"] == "helps"  # every pair gains: far above twice the standard error
    assert result["base"]["runs_never_automated"] == 1
    assert result["change"]["runs_never_automated"] == 0
    # three attempts per run; the one that certified is not a failure
    assert (result["base"]["attempts"], result["base"]["failed_attempts"]) == (12, 9)
    md = compare_markdown(result)
    assert "**helps**" in md and "2: 0%→30%" in md
    assert "Labels spent (change − base): +0 per run" in md
    assert "Neither arm automated" not in md

    # The same runs the other way round hurt; a mixed change is noise.
    assert compare([tmp_path / "b"], [tmp_path / "a"])["share_of_oracle"]["verdict"] == "hurts"
    _arm(tmp_path / "c", {0: 0.4, 1: 0.7, 2: 0.0, 3: 0.7}, task=change_task)
    assert compare([tmp_path / "a"], [tmp_path / "c"])["share_of_oracle"]["verdict"] == (
        "within noise"
    )
    _arm(tmp_path / "n0", {0: 0.0, 1: 0.0}, task=base_task)
    _arm(tmp_path / "n1", {0: 0.0, 1: 0.0}, task=change_task)
    nothing = compare_markdown(compare([tmp_path / "n0"], [tmp_path / "n1"]))
    assert "Neither arm automated anything in any run" in nothing


def test_compare_refuses_arms_that_differ_in_more_than_the_task(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tandem.cli import main

    _arm(tmp_path / "a", {0: 0.5, 1: 0.6}, task={"policy": {}})
    _arm(tmp_path / "b", {0: 0.5, 1: 0.6}, task={"policy": {"cold_start_audit_rate": 0.5}})
    for seed in (0, 1):  # another target: not a comparison of policies on the same promise
        path = tmp_path / "b" / f"seed-{seed}" / "summary.json"
        path.write_text(path.read_text().replace('"target_error": 0.1', '"target_error": 0.05'))
    bad = CliRunner().invoke(
        main,
        ["simulate-compare", "--base", str(tmp_path / "a"), "--change", str(tmp_path / "b"),
         "--out", str(tmp_path / "x")],
    )  # fmt: skip
    assert bad.exit_code == 1
    assert "target_error (0.1 against 0.05)" in bad.output
    assert not (tmp_path / "x").exists()
    same = CliRunner().invoke(
        main,
        ["simulate-compare", "--base", str(tmp_path / "a"), "--change", str(tmp_path / "a"),
         "--out", str(tmp_path / "z")],
    )  # fmt: skip
    assert same.exit_code == 1 and "same task and policy" in same.output
    _arm(tmp_path / "c", {0: 0.6, 1: 0.6}, task={"policy": {"cold_start_audit_rate": 0.5}})
    ok = CliRunner().invoke(
        main,
        ["simulate-compare", "--base", str(tmp_path / "a"), "--change", str(tmp_path / "c"),
         "--out", str(tmp_path / "y")],
    )  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "2 paired seeds" in ok.output
    assert (tmp_path / "y" / "compare.json").exists()


def test_a_setting_stored_at_its_default_does_not_split_the_runs(tmp_path: Path) -> None:
    """Runs made before a policy setting existed did not store it; those after store its
    default. They are the same policy and join in one table."""
    _write_run(tmp_path / "a", 0, task={"policy": {"target_error": 0.1}})
    _write_run(tmp_path / "a", 1, task={"policy": {"target_error": 0.1, "watch_min_answers": 1}})
    summaries, _, _ = combine([tmp_path / "a"], tmp_path / "out")
    assert [s["seed"] for s in summaries] == [0, 1]
    _write_run(tmp_path / "b", 2, task={"policy": {"target_error": 0.1, "watch_min_answers": 30}})
    with pytest.raises(ValueError, match="task"):
        combine([tmp_path / "a", tmp_path / "b"], tmp_path / "out2")
