"""The table across seeds: shares of runs that broke the promise, mean automation."""

from __future__ import annotations

from typing import Any

from service.simulate.runner import aggregate, table_markdown


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
    assert md.count("\n| ") == 4  # one row per policy under the header
    assert "| Tandem (certified) | 25% | 0% (0/8 rules) |" in md
