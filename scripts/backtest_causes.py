"""Why each replay of a `tandem simulate --seeds` folder automated what it did.

For every run: the final quarter's share of the oracle, when the first automatic answer came
(human labels by then), the certification attempts (ledger size, δ, certified coverage or
the failed first step: errors / cases), the fallbacks and drift warnings with what they
said, and the deployed rules' worst true error. Used to write docs/backtest.md's "Where the
share is lost"; reads only the runs' summary.json (gzipped archives too).

    python scripts/backtest_causes.py docs/backtest-runs/credit_data_2026-11-30
"""

from __future__ import annotations

import sys
from pathlib import Path

from tandem.simulate.seeds import milestones, read_runs


def describe(summary: dict) -> list[str]:
    tandem = summary["policies"]["tandem"]
    marks = milestones(summary)
    share = tandem.get("final_quarter_share_of_oracle")
    first = marks["labels_before_first_automation"]
    lines = [
        f"seed {summary['seed']}: share {'—' if share is None else f'{share:.0%}'}, first "
        f"automatic answer after {'never' if first is None else f'{first:,} labels'}, "
        f"worst deployed rule {tandem.get('deployed_true_error_max')}"
    ]
    for v in summary.get("versions", []):
        if not v.get("checkpoints"):
            continue
        cp = v.get("checkpoint") or {}
        steps = next(iter((v.get("tested_steps") or {}).values()), [])
        first_step = steps[0] if steps else {}
        expected = next(iter((v.get("attempt_readiness") or {}).values()), None) or {}
        outcome = (
            f"certified {v['coverage']:.0%}"
            if v.get("certified")
            else f"failed: {first_step.get('errors')}/{first_step.get('n')} at "
            f"{first_step.get('coverage', 0):.0%}"
        )
        p = expected.get("pass_probability")
        lines.append(
            f"  v{v['version']} ({v['training_cases']} training cases): attempt "
            f"{cp.get('index')} on {cp.get('ledger_size_due')} audited, δ {cp.get('delta', 0):.4f}"
            f" -> {outcome}" + ("" if p is None else f" (expected pass {p:.2f})")
        )
    for alert in summary.get("alerts", []):
        details = alert.get("details") or {}
        lines.append(f"  {alert['action']}: {details.get('warnings') or details}")
    return lines


def calibration(summaries: list[dict]) -> str:
    """Readiness's expected pass probability of each attempt against its outcome: how often
    attempts expected to pass with probability p did pass."""
    expected, passed = [], []
    for s in summaries:
        for v in s.get("versions", []):
            ready = next(iter((v.get("attempt_readiness") or {}).values()), None) or {}
            if v.get("checkpoints") and ready.get("pass_probability") is not None:
                expected.append(float(ready["pass_probability"]))
                passed.append(bool(v.get("certified")))
    if not expected:
        return "no attempt recorded what readiness expected"
    mean_p = sum(expected) / len(expected)
    return (
        f"{len(expected)} attempts: expected to pass with probability {mean_p:.2f} on "
        f"average, passed {sum(passed)} ({sum(passed) / len(passed):.0%})"
    )


def main(folders: list[str]) -> None:
    summaries = read_runs([Path(f) for f in folders])
    for s in summaries:
        print("\n".join(describe(s)))
    print(calibration(summaries))


if __name__ == "__main__":
    main(sys.argv[1:])
