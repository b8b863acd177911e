"""One replay or many (``--seeds K``), their files, and the table across seeds."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tandem.simulate.data import Dataset, load_dataset
from tandem.simulate.engine import SimOptions, simulate, stop_replay
from tandem.simulate.report import POLICY_ORDER, POLICY_TITLES, write_outputs


def exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C (``stop_replay``), so the embedded Redis and a PostgreSQL
    scratch database are cleaned up when a replay is stopped."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop_replay())


def run_one(dataset: Dataset, options: SimOptions, out: Path) -> dict[str, Any]:
    """Replay once and write summary.json, cases.csv, the PNGs and report.html to ``out``."""
    exit_on_sigterm()
    recorded = simulate(dataset, options)
    return write_outputs(out, recorded)


def _seed_job(args: tuple[Path, str, dict[str, Any] | None, int | None, SimOptions, Path]) -> dict:
    path, label, task, rows, options, out = args
    dataset = load_dataset(path, label, task=task, rows=rows)
    return run_one(dataset, options, out)


def aggregate(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Per policy across runs: how often the promise broke (realised error of the automatic
    answers above target; any deployed rule's true error above target), automation overall
    and over the final quarter (also as a share of the oracle's), labels spent."""
    table: dict[str, Any] = {}
    k = len(summaries)
    for name in POLICY_ORDER:
        ps = [s["policies"][name] for s in summaries]

        def mean(key: str, items: list[dict[str, Any]] = ps) -> float | None:
            vals = [p[key] for p in items if p.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        deployed = [p["deployed_exceeded"] for p in ps if p.get("deployed_exceeded") is not None]
        table[name] = {
            "runs": k,
            "realised_exceeded_share": sum(bool(p["realised_exceeded"]) for p in ps) / k,
            "deployed_exceeded_share": (sum(deployed) / len(deployed)) if deployed else None,
            "deployed_breaches_total": sum(int(p.get("deployed_breaches") or 0) for p in ps),
            "deployed_rules_total": sum(int(p.get("deployed_rules") or 0) for p in ps),
            "mean_automation": mean("automation"),
            "mean_final_quarter_automation": mean("final_quarter_automation"),
            "mean_final_quarter_share_of_oracle": mean("final_quarter_share_of_oracle"),
            "mean_realised_error": mean("realised_error"),
            "mean_labels_spent": mean("labels_spent"),
        }
    table["tandem_spread"] = spread(summaries)
    return table


def milestones(summary: dict[str, Any]) -> dict[str, Any]:
    """When a run first automated (case position and human labels spent by then; None if it
    never did) and how often the label-free drift warning froze widening, from its
    per-chunk timeline."""
    first = next((r for r in summary.get("timeline", []) if r.get("state") == "automating"), None)
    warnings, was = 0, False
    for r in summary.get("timeline", []):
        now = bool(r.get("frozen"))
        warnings += now and not was
        was = now
    return {
        "first_automation_case": None if first is None else first.get("position"),
        "labels_before_first_automation": None if first is None else first.get("human_labels"),
        "drift_warnings": warnings,
    }


def attempts(summary: dict[str, Any]) -> tuple[int, int]:
    """(certification attempts, attempts that certified nothing) of a run: every attempt a
    version made is in its ``checkpoints``; only its last can have certified."""
    made = failed = 0
    for v in summary.get("versions", []):
        n = len(v.get("checkpoints") or [])
        made += n
        failed += n - (1 if v.get("certified") and n else 0)
    return made, failed


def spread(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Tandem's run-by-run spread: share of the oracle (min / median / max), labels before
    the first automatic answer (median; runs that never automated are counted apart) and
    drift warnings per run, for the backtest table (docs/backtest.md)."""
    shares = [s["policies"]["tandem"].get("final_quarter_share_of_oracle") for s in summaries]
    shares = [x for x in shares if x is not None]
    marks = [milestones(s) for s in summaries]
    firsts = [m["labels_before_first_automation"] for m in marks]
    tries = [attempts(s) for s in summaries]
    reached = [x for x in firsts if x is not None]
    return {
        "runs": len(summaries),
        "share_of_oracle_min": min(shares) if shares else None,
        "share_of_oracle_median": float(np.median(shares)) if shares else None,
        "share_of_oracle_max": max(shares) if shares else None,
        "share_of_oracle_per_run": shares,
        "labels_before_first_automation_median": float(np.median(reached)) if reached else None,
        "runs_never_automated": sum(x is None for x in firsts),
        "drift_warnings_per_run": float(np.mean([m["drift_warnings"] for m in marks]))
        if marks
        else None,
        "runs_with_a_drift_warning": sum(m["drift_warnings"] > 0 for m in marks),
        "fallbacks_per_run": float(np.mean([int(s.get("fallbacks") or 0) for s in summaries])),
        "runs_with_a_fallback": sum(int(s.get("fallbacks") or 0) > 0 for s in summaries),
        "attempts": sum(t[0] for t in tries),
        "failed_attempts": sum(t[1] for t in tries),
    }


def _pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def table_markdown(table: dict[str, Any], alpha: float) -> str:
    lines = [
        "| policy | runs: realised error > α | runs: a deployed rule's true error > α "
        "| automation | final-quarter automation | final quarter, share of oracle "
        "| mean realised error | labels spent |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in POLICY_ORDER:
        t = table[name]
        dep = (
            "—"
            if name == "oracle" or t["deployed_exceeded_share"] is None
            else f"{_pct(t['deployed_exceeded_share'], 0)} "
            f"({t['deployed_breaches_total']}/{t['deployed_rules_total']} rules)"
        )
        lines.append(
            f"| {POLICY_TITLES[name]} | {_pct(t['realised_exceeded_share'], 0)} | {dep} "
            f"| {_pct(t['mean_automation'])} | {_pct(t['mean_final_quarter_automation'])} "
            f"| {_pct(t['mean_final_quarter_share_of_oracle'], 0)} "
            f"| {_pct(t['mean_realised_error'], 2)} | {t['mean_labels_spent']:,.0f} |"
        )
    lines.append("")
    lines.append(f"α = {alpha:g}; shares are over runs; means over runs.")
    sp = table.get("tandem_spread")
    if sp:
        first = sp["labels_before_first_automation_median"]
        lines += [
            "",
            "| Tandem, run by run | value |",
            "|---|---|",
            f"| final quarter, share of oracle: min / median / max "
            f"| {_pct(sp['share_of_oracle_min'], 0)} / {_pct(sp['share_of_oracle_median'], 0)}"
            f" / {_pct(sp['share_of_oracle_max'], 0)} |",
            f"| human labels before the first automatic answer (median) "
            f"| {'—' if first is None else f'{first:,.0f}'}"
            f"; never automated in {sp['runs_never_automated']} of {sp['runs']} runs |",
            f"| drift warnings per run (runs with one) "
            f"| {sp['drift_warnings_per_run']:.2f} ({sp['runs_with_a_drift_warning']}) |",
            f"| fallbacks per run (runs with one; on a shuffled replay every one is a false "
            f"alarm unless a deployed rule's true error is above α) "
            f"| {sp.get('fallbacks_per_run', 0):.2f} ({sp.get('runs_with_a_fallback', 0)}) |",
            f"| certification attempts (of which certified nothing) "
            f"| {sp.get('attempts', 0)} ({sp.get('failed_attempts', 0)}) |",
        ]
    return "\n".join(lines)


def run_many(
    path: Path,
    label: str,
    *,
    task: dict[str, Any] | None,
    rows: int | None,
    options: SimOptions,
    seeds: int,
    out: Path,
    jobs: int = 1,
) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """K shuffled replays (seeds ``seed``..``seed+K-1``), each in ``out/seed-N``; then the
    table across them (``out/seeds.json``, ``out/seeds.md``)."""
    exit_on_sigterm()  # with --jobs, unwinding here terminates the pool's replays in turn
    started = time.perf_counter()
    args = [
        (
            path,
            label,
            task,
            rows,
            replace(options, seed=options.seed + i, order="shuffle", progress=options.progress),
            out / f"seed-{options.seed + i}",
        )
        for i in range(seeds)
    ]
    summaries: list[dict[str, Any]]
    if jobs > 1:
        args = [(a[0], a[1], a[2], a[3], replace(a[4], progress=False), a[5]) for a in args]
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(processes=jobs, maxtasksperchild=1) as pool:
            summaries = []
            for s in pool.imap(_seed_job, args):
                summaries.append(s)
                _print_line(s)
                _write_table(out, path, label, summaries, time.perf_counter() - started)
    else:
        summaries = []
        for a in args:
            s = _seed_job(a)
            summaries.append(s)
            _print_line(s)
            _write_table(out, path, label, summaries, time.perf_counter() - started)
    return (summaries, *_write_table(out, path, label, summaries, time.perf_counter() - started))


#: What must agree between runs before their table means anything.
COMPARABLE_KEYS = (
    "label_column", "rows", "target_error", "confidence", "reviewer_error", "chunk", "knobs",
    "task",
)  # fmt: skip


#: An archived run may be gzipped (docs/backtest-runs keeps them that way).
SUMMARY_FILES = ("summary.json", "summary.json.gz")


def _read_summary(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    summary: dict[str, Any] = json.loads(raw)
    return summary


def comparable(summary: dict[str, Any], key: str) -> Any:
    """``summary[key]`` as compared between runs: a task's policy with every setting the run
    did not store at the value it then ran with, so a run made before a setting existed
    compares equal to one that stored that value. That value is the policy model's default
    (what a stored policy without the key means), not the API's default for new tasks: the
    two differ where a new default applies to new tasks only (``watch_confidence``)."""
    value = summary.get(key)
    if key != "task" or not isinstance(value, dict) or "policy" not in value:
        return value
    from service.policy import Policy
    from service.schemas.tasks import PolicySchema

    as_run = {**PolicySchema().load({}), **Policy().to_dict()}
    return {**value, "policy": {**as_run, **(value.get("policy") or {})}}


def read_runs(dirs: list[Path]) -> list[dict[str, Any]]:
    """The ``seed-N/summary.json`` runs under ``dirs``, by seed. Refuses runs that differ in
    anything but the seed, and a seed seen twice."""
    files = sorted(
        f for d in dirs for pattern in SUMMARY_FILES for f in d.glob(f"seed-*/{pattern}")
    )
    if not files:
        raise ValueError(
            "no seed-*/summary.json under "
            + ", ".join(map(str, dirs))
            + " (give the folders `tandem simulate --seeds K --out DIR` wrote)"
        )
    summaries = [_read_summary(f) for f in files]
    first = summaries[0]
    for f, s in zip(files, summaries, strict=True):
        different = [k for k in COMPARABLE_KEYS if comparable(s, k) != comparable(first, k)]
        if Path(s["dataset"]).name != Path(first["dataset"]).name:
            different.insert(0, "dataset")
        if different:
            raise ValueError(
                f"{f} is not comparable with {files[0]}: {', '.join(different)} differ"
            )
    seeds = [s["seed"] for s in summaries]
    repeated = sorted({x for x in seeds if seeds.count(x) > 1})
    if repeated:
        raise ValueError(f"seed(s) {repeated} appear more than once")
    summaries.sort(key=lambda s: s["seed"])
    return summaries


def combine(dirs: list[Path], out: Path) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """One table from the ``seed-N/summary.json`` runs in several ``--seeds`` folders, e.g. a
    long backtest split across machines (``--seed 0 --seeds 10`` here, ``--seed 10 --seeds
    10`` there)."""
    summaries = read_runs(dirs)
    first = summaries[0]
    elapsed = sum(float(s.get("elapsed_seconds") or 0.0) for s in summaries)
    return (
        summaries,
        *_write_table(out, Path(first["dataset"]), first["label_column"], summaries, elapsed),
    )


def _write_table(
    out: Path, path: Path, label: str, summaries: list[dict[str, Any]], elapsed: float
) -> tuple[dict[str, Any], str]:
    """seeds.json and seeds.md for the runs finished so far (rewritten after each run, so
    a long backtest stopped early still leaves its table)."""
    out.mkdir(parents=True, exist_ok=True)
    table = aggregate(summaries)
    alpha = float(summaries[0]["target_error"])
    md = table_markdown(table, alpha)
    (out / "seeds.json").write_text(
        json.dumps(
            {
                "dataset": str(path),
                "label": label,
                "seeds": [s["seed"] for s in summaries],
                "target_error": alpha,
                "confidence": summaries[0]["confidence"],
                "rows": summaries[0]["rows"],
                "elapsed_seconds": round(elapsed, 1),
                "table": table,
            },
            indent=2,
        ),
        encoding="utf-8",
    )
    (out / "seeds.md").write_text(md + "\n", encoding="utf-8")
    return table, md


def _print_line(s: dict[str, Any]) -> None:
    import click

    t = s["policies"]["tandem"]
    click.echo(
        f"seed {s['seed']}: automation {_pct(t['automation'])}, final quarter "
        f"{_pct(t['final_quarter_automation'])} ({_pct(t['final_quarter_share_of_oracle'], 0)} "
        f"of oracle), realised error {_pct(t['realised_error'], 2)}, worst deployed rule "
        f"{_pct(t['deployed_true_error_max'], 2)}, {t['labels_spent']} labels, "
        f"{s['elapsed_seconds']} s",
        err=True,
    )
