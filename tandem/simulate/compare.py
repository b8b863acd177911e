"""Two policies replayed on the same seeds, compared seed by seed (``tandem simulate-compare``).

With seeded case ids (docs/backtest.md, "Repeatable runs") two replays with the same seed see
the same arrivals, the same reviewer and the same audit draws until their routing differs,
so the difference of a paired run measures the policies rather than the lottery. The rule a
policy change has to pass (docs/backtest.md, "How a change is judged"): it helps where the
mean paired difference in the final quarter's share of the oracle is above twice its
standard error, hurts where it is below minus twice, and is noise otherwise.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tandem.simulate.seeds import COMPARABLE_KEYS, attempts, comparable, milestones, read_runs

#: Differences within this many standard errors of zero are noise.
NOISE_SE = 2.0


def run_measures(summary: dict[str, Any]) -> dict[str, Any]:
    """What the comparison reads from one run."""
    tandem = summary["policies"]["tandem"]
    marks = milestones(summary)
    made, failed = attempts(summary)
    return {
        "share_of_oracle": tandem.get("final_quarter_share_of_oracle"),
        "final_quarter_automation": tandem.get("final_quarter_automation"),
        "labels_spent": tandem.get("labels_spent"),
        "labels_before_first_automation": marks["labels_before_first_automation"],
        "drift_warnings": marks["drift_warnings"],
        "fallbacks": int(summary.get("fallbacks") or 0),
        "attempts": made,
        "failed_attempts": failed,
        "deployed_breaches": int(tandem.get("deployed_breaches") or 0),
        "deployed_rules": int(tandem.get("deployed_rules") or 0),
    }


def paired_difference(base: list[float], change: list[float]) -> dict[str, Any]:
    """Mean of change − base over the pairs, its standard error, and the verdict."""
    diffs = np.asarray(change, dtype=float) - np.asarray(base, dtype=float)
    n = int(diffs.size)
    mean = float(diffs.mean()) if n else math.nan
    se = float(diffs.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    if n < 2 or not math.isfinite(se):
        verdict = "too few pairs"
    elif mean > NOISE_SE * se:
        verdict = "helps"
    elif mean < -NOISE_SE * se:
        verdict = "hurts"
    else:
        verdict = "within noise"
    return {"pairs": n, "mean": mean, "standard_error": se, "verdict": verdict}


def compare(base_dirs: list[Path], change_dirs: list[Path]) -> dict[str, Any]:
    """Pair the runs of two arms by seed. Refuses arms that differ in anything but the task
    (the policy under test) and the seed; seeds present in only one arm are left out and
    listed."""
    base = {s["seed"]: s for s in read_runs(base_dirs)}
    change = {s["seed"]: s for s in read_runs(change_dirs)}
    first_b, first_c = next(iter(base.values())), next(iter(change.values()))
    keys = [k for k in COMPARABLE_KEYS if k != "task"]
    different = [
        f"{k} ({first_b.get(k)!r} against {first_c.get(k)!r})"
        for k in keys
        if comparable(first_b, k) != comparable(first_c, k)
    ]
    if Path(first_b["dataset"]).name != Path(first_c["dataset"]).name:
        different.insert(0, "dataset")
    if different:
        raise ValueError(
            f"the arms differ in {', '.join(different)}: only the policy under test may "
            "differ (the same dataset, rows, target error, confidence, reviewer error and "
            "training knobs in both)"
        )
    if comparable(first_b, "task") == comparable(first_c, "task"):
        raise ValueError("the arms ran the same task and policy: there is no change to compare")
    seeds = sorted(set(base) & set(change))
    if not seeds:
        raise ValueError("the arms have no seed in common")
    pairs = [
        {"seed": seed, "base": run_measures(base[seed]), "change": run_measures(change[seed])}
        for seed in seeds
    ]

    def both(key: str) -> tuple[list[float], list[float]]:
        kept = [p for p in pairs if p["base"][key] is not None and p["change"][key] is not None]
        return [float(p["base"][key]) for p in kept], [float(p["change"][key]) for p in kept]

    def arm_summary(side: str) -> dict[str, Any]:
        runs = [p[side] for p in pairs]
        shares = [r["share_of_oracle"] for r in runs if r["share_of_oracle"] is not None]
        firsts = [
            r["labels_before_first_automation"]
            for r in runs
            if r["labels_before_first_automation"] is not None
        ]
        return {
            "share_of_oracle_mean": float(np.mean(shares)) if shares else None,
            "share_of_oracle_min": min(shares) if shares else None,
            "share_of_oracle_median": float(np.median(shares)) if shares else None,
            "share_of_oracle_max": max(shares) if shares else None,
            "labels_before_first_automation_median": float(np.median(firsts)) if firsts else None,
            "runs_never_automated": len(runs) - len(firsts),
            "labels_spent_mean": float(np.mean([r["labels_spent"] for r in runs])),
            "attempts": sum(r["attempts"] for r in runs),
            "failed_attempts": sum(r["failed_attempts"] for r in runs),
            "drift_warnings_per_run": float(np.mean([r["drift_warnings"] for r in runs])),
            "fallbacks_per_run": float(np.mean([r["fallbacks"] for r in runs])),
            "deployed_rules": sum(r["deployed_rules"] for r in runs),
            "deployed_breaches": sum(r["deployed_breaches"] for r in runs),
        }

    return {
        "dataset": Path(first_b["dataset"]).name,
        "target_error": first_b["target_error"],
        "base_task": first_b.get("task"),
        "change_task": first_c.get("task"),
        "seeds": seeds,
        "unpaired_seeds": sorted(set(base) ^ set(change)),
        "base": arm_summary("base"),
        "change": arm_summary("change"),
        "share_of_oracle": paired_difference(*both("share_of_oracle")),
        "labels_spent": paired_difference(*both("labels_spent")),
        "pairs": pairs,
    }


def _pct(v: float | None) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{100 * v:.0f}%"


def compare_markdown(result: dict[str, Any]) -> str:
    b, c, d = result["base"], result["change"], result["share_of_oracle"]
    lines = [
        f"{result['dataset']}, α = {result['target_error']:g}, {d['pairs']} paired seeds",
        "",
        "| arm | share of oracle: mean (min / median / max) | labels before first automatic "
        "answer (median) | never automated | labels spent | attempts (certified nothing) "
        "| drift warnings per run | fallbacks per run | deployed rules above α |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    labels = result["labels_spent"]
    for name, arm in (("base", b), ("change", c)):
        first = arm["labels_before_first_automation_median"]
        lines.append(
            f"| {name} | {_pct(arm['share_of_oracle_mean'])} ({_pct(arm['share_of_oracle_min'])}"
            f" / {_pct(arm['share_of_oracle_median'])} / {_pct(arm['share_of_oracle_max'])}) "
            f"| {'—' if first is None else f'{first:,.0f}'} | {arm['runs_never_automated']} "
            f"| {arm['labels_spent_mean']:,.0f} | {arm['attempts']} ({arm['failed_attempts']}) "
            f"| {arm['drift_warnings_per_run']:.2f} | {arm['fallbacks_per_run']:.2f} "
            f"| {arm['deployed_breaches']} of {arm['deployed_rules']} |"
        )
    per_seed = ", ".join(
        f"{p['seed']}: {_pct(p['base']['share_of_oracle'])}→{_pct(p['change']['share_of_oracle'])}"
        for p in result["pairs"]
    )
    lines += [
        "",
        f"Paired difference in the final quarter's share of the oracle (change − base): "
        f"{100 * d['mean']:+.1f} points, standard error {100 * d['standard_error']:.1f}: "
        f"**{d['verdict']}**. Labels spent (change − base): {labels['mean']:+,.0f} per run, "
        f"standard error {labels['standard_error']:,.0f}.",
        "",
        f"Seed by seed (base→change): {per_seed}.",
    ]
    if b["runs_never_automated"] == c["runs_never_automated"] == d["pairs"]:
        lines.append(
            "Neither arm automated anything in any run: the streams are too short (or the "
            "target too strict) for this comparison to say anything."
        )
    if result["unpaired_seeds"]:
        lines.append(f"Left out (in one arm only): seeds {result['unpaired_seeds']}.")
    return "\n".join(lines)


def write_comparison(
    base_dirs: list[Path], change_dirs: list[Path], out: Path
) -> tuple[dict[str, Any], str]:
    """compare.json and compare.md in ``out``."""
    result = compare(base_dirs, change_dirs)
    md = compare_markdown(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out / "compare.md").write_text(md + "\n", encoding="utf-8")
    return result, md
