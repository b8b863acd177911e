"""The body of ``tandem simulate`` (the click command in tandem/cli.py only parses)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from tandem.simulate.data import load_dataset
from tandem.simulate.engine import SimOptions
from tandem.simulate.seeds import run_many, run_one


def simulate_command(
    data: Path,
    label: str,
    *,
    task_file: Path | None,
    seed: int,
    seeds: int,
    order: str | None,
    out: Path,
    reviewer_error: float,
    target_error: float | None,
    rows: int | None,
    chunk: int,
    hgb_max_iter: int | None,
    families: str | None,
    jobs: int,
    cache: Path | None = None,
) -> None:
    task: dict[str, Any] | None = None
    if task_file is not None:
        try:
            task = json.loads(task_file.read_text())
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"{task_file} is not valid JSON: {exc}") from exc
        if not isinstance(task, dict):
            raise click.BadParameter(f"{task_file} must hold a JSON object")
    if seeds < 1 or jobs < 1 or chunk < 1:
        raise click.BadParameter("--seeds, --jobs and --chunk must be at least 1")
    if not 0.0 <= reviewer_error < 1.0:
        raise click.BadParameter("--reviewer-error must be in [0, 1)")
    options = SimOptions(
        seed=seed,
        order=order or ("shuffle" if seeds > 1 else "file"),
        reviewer_error=reviewer_error,
        target_error=target_error,
        chunk=chunk,
        hgb_max_iter=hgb_max_iter,
        families=families,
        database_url=os.environ.get("DATABASE_URL") or None,
        cache=cache,
    )
    dataset = load_dataset(data, label, task=task, rows=rows)
    kinds = ", ".join(f"{f['name']}:{f['type']}" for f in dataset.fields)
    click.echo(
        f"{data.name}: {len(dataset):,} rows, labels {dataset.labels[:8]}"
        f"{' ...' if len(dataset.labels) > 8 else ''}; fields {kinds}",
        err=True,
    )
    if seeds == 1:
        summary = run_one(dataset, options, out)
        t = summary["policies"]
        for name in ("tandem", "fixed", "naive", "oracle"):
            p = t[name]
            err = p["realised_error"]
            click.echo(
                f"{name:>7}: automation {p['automation']:.1%}, final quarter "
                f"{p['final_quarter_automation']:.1%}, realised error "
                f"{'—' if err is None else f'{err:.2%}'}, labels {p['labels_spent']:,}",
                err=True,
            )
        if not t["tandem"]["auto_answers"]:
            from tandem.simulate.report import why_not_automated

            click.echo(f"nothing was automated{why_not_automated(summary['versions'])}", err=True)
        click.echo(f"report: {out / 'report.html'}", err=True)
        click.echo(str(out / "summary.json"))
        return
    _, _, md = run_many(
        data, label, task=task, rows=rows, options=options, seeds=seeds, out=out, jobs=jobs
    )
    click.echo(md)
    click.echo(
        f"per-seed reports in {out}/seed-*/report.html; table in {out / 'seeds.md'}", err=True
    )
