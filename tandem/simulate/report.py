"""Turn a recorded replay into numbers and files: summary.json, cases.csv, PNG plots and one
self-contained HTML report (images inlined as base64, inline CSS, no external assets)."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from service.policy import Policy
from tandem.simulate import policies as pol
from tandem.simulate.engine import Recorded

PLOTS = ("automation.png", "error.png", "labels.png", "versions.png")
POLICY_ORDER = ("tandem", "fixed", "naive", "oracle")
POLICY_TITLES = {
    "tandem": "Tandem (certified)",
    "fixed": "fixed threshold 0.9",
    "naive": "naive point estimate",
    "oracle": "hindsight oracle",
}
MIN_PLOTTED_AUTO = 20
COLOURS = {"tandem": "#1f6feb", "fixed": "#8b949e", "naive": "#d29922", "oracle": "#2da44e"}


def analyse(rec: Recorded) -> tuple[dict[str, Any], dict[str, pol.PolicyRun]]:
    """Per-policy measures on the same stream and versions, and the run's summary."""
    policy = Policy.from_dict(rec.task["policy"])
    alpha, conf = policy.target_error, policy.confidence
    s = rec.stream
    runs = {
        "tandem": pol.tandem_policy(s, rec.reviews),
        "fixed": pol.fixed_policy(s),
        "naive": pol.naive_policy(s, rec.versions, alpha),
    }
    oracle_run, tau, tau_fq = pol.oracle_policy(s, alpha)
    runs["oracle"] = oracle_run
    oracle_fq = pol.quarter_automation(s, tau_fq)
    measures = {
        name: pol.evaluate(run, s, rec.versions, alpha, conf, oracle_quarter=oracle_fq)
        for name, run in runs.items()
    }
    measures["oracle"]["threshold"] = tau
    measures["oracle"]["final_quarter_threshold"] = tau_fq
    measures["oracle"]["final_quarter_automation"] = oracle_fq
    measures["oracle"]["final_quarter_share_of_oracle"] = 1.0 if oracle_fq else None
    measures["oracle"]["deployed_exceeded"] = None
    summary = {
        "dataset": str(rec.dataset.path),
        "label_column": rec.dataset.label_column,
        "rows": len(rec.dataset),
        "dropped_unlabelled_rows": rec.dataset.dropped_unlabelled,
        "seed": rec.options.seed,
        "order": rec.options.order,
        "chunk": rec.options.chunk,
        "reviewer_error": rec.options.reviewer_error,
        "reviewer_wrong_answers": int(
            sum(1 for h, t in zip(s.human, s.truth, strict=True) if h is not None and h != t)
        ),
        "task": rec.task,
        "target_error": alpha,
        "confidence": conf,
        "policies": measures,
        "versions": [
            {
                **v,
                "true_error_at_certified_threshold": (
                    pol.true_error(
                        rec.versions[v["version"]],
                        pol.stream_truth_by_row(s, rec.versions[v["version"]]),
                        v["threshold"],
                    )
                    if v["version"] in rec.versions and v["threshold"] is not None
                    else None
                ),
            }
            for v in rec.version_rows
        ],
        "timeline": rec.timeline,
        "human_labels": rec.reviews,
        "training_jobs": rec.training_jobs,
        "fallbacks": rec.fallbacks,
        "audit_events": rec.events,
        "alerts": rec.alerts,
        "elapsed_seconds": round(rec.elapsed, 1),
        "knobs": {"hgb_max_iter": rec.options.hgb_max_iter, "families": rec.options.families},
    }
    return summary, runs


def interval_band(k: np.ndarray, m: np.ndarray, confidence: float) -> tuple[np.ndarray, ...]:
    """Two-sided exact (Clopper-Pearson) interval of k/m at every point, vectorised."""
    from scipy import stats

    delta = 1.0 - confidence
    k = np.asarray(k, dtype=float)
    m = np.asarray(m, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, stats.beta.ppf(delta / 2, k, m - k + 1), 0.0)
        hi = np.where(k < m, stats.beta.ppf(1 - delta / 2, k + 1, m - k), 1.0)
    lo[m == 0] = np.nan
    hi[m == 0] = np.nan
    return lo, hi


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean(value: Any) -> Any:
    """NaN → None everywhere (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_cases(path: Path, rec: Recorded, runs: dict[str, pol.PolicyRun]) -> None:
    s = rec.stream
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "position",
                "row",
                "chunk",
                "true_label",
                "model_version",
                "suggestion",
                "confidence",
                "route",
                "reason",
                "audit",
                "tandem_auto",
                "tandem_correct",
                "human_label",
                "reviewer_wrong",
                "fixed_auto",
                "naive_auto",
                "oracle_auto",
            ]
        )
        for i in range(len(s)):
            auto = bool(s.auto[i])
            human = s.human[i]
            w.writerow(
                [
                    i,
                    int(s.rows[i]),
                    int(s.chunk[i]),
                    s.truth[i],
                    int(s.version[i]) or "",
                    s.pred[i] if s.pred[i] is not None else "",
                    f"{s.score[i]:.6f}" if np.isfinite(s.score[i]) else "",
                    rec.routes[i].get("route", ""),
                    rec.routes[i].get("reason", ""),
                    int(bool(rec.routes[i].get("audit"))),
                    int(auto),
                    int(s.pred[i] == s.truth[i]) if auto else "",
                    human if human is not None else "",
                    int(human != s.truth[i]) if human is not None else "",
                    int(runs["fixed"].auto[i]),
                    int(runs["naive"].auto[i]),
                    int(runs["oracle"].auto[i]),
                ]
            )


# ------------------------------------------------------------------------------- plots


def plot_all(out: Path, rec: Recorded, runs: dict[str, pol.PolicyRun], summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = rec.stream
    n = len(s)
    x = np.arange(1, n + 1)
    alpha = summary["target_error"]
    window = max(50, min(500, n // 10))
    wrong = s.pred != s.truth

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    for name in POLICY_ORDER:
        ax.plot(
            x,
            pol.rolling_rate(runs[name].auto, window),
            label=POLICY_TITLES[name],
            color=COLOURS[name],
            lw=2.2 if name == "tandem" else 1.3,
            ls="--" if name == "oracle" else "-",
        )
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("cases arrived")
    ax.set_ylabel(f"automated (last {window} cases)")
    ax.set_title("Automation rate over time")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "automation.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    auto = s.auto
    m = np.cumsum(auto)
    k = np.cumsum(auto & wrong)
    err = pol.cumulative_error(auto, wrong)
    err[m < MIN_PLOTTED_AUTO] = np.nan  # a handful of answers says nothing yet
    lo, hi = interval_band(k, m, summary["confidence"])
    lo[m < MIN_PLOTTED_AUTO] = np.nan
    hi[m < MIN_PLOTTED_AUTO] = np.nan
    ax.fill_between(x, lo, hi, color=COLOURS["tandem"], alpha=0.15, label="95% interval")
    ax.plot(x, err, color=COLOURS["tandem"], lw=2, label="Tandem realised error (cumulative)")
    for name in ("fixed", "naive"):
        other = pol.cumulative_error(runs[name].auto, wrong)
        other[np.cumsum(runs[name].auto) < MIN_PLOTTED_AUTO] = np.nan
        ax.plot(
            x,
            other,
            color=COLOURS[name],
            lw=1.2,
            label=f"{POLICY_TITLES[name]} realised error",
        )
    ax.axhline(alpha, color="#cf222e", ls="--", lw=1.5, label=f"target α = {alpha:g}")
    bound = np.full(n, np.nan)
    for rule, nxt in zip(rec.timeline[:-1], rec.timeline[1:], strict=True):
        if rule["state"] == "automating" and rule["error_bound"] is not None:
            bound[rule["position"] : nxt["position"]] = rule["error_bound"]
    ax.plot(x, bound, color="#8250df", lw=1.5, ls=":", label="certified bound (deployed)")
    top = np.nanmax(np.r_[hi[np.isfinite(hi)], [alpha * 2.5]]) if np.isfinite(hi).any() else 0.1
    ax.set_ylim(0, min(1.0, max(alpha * 3, min(top, alpha * 6))))
    ax.set_xlim(1, n)
    ax.set_xlabel("cases arrived")
    ax.set_ylabel("error among automatic answers")
    ax.set_title("Realised error of automatic answers")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "error.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    tandem_labels = np.cumsum(s.labelled_chunk >= 0)
    ax.plot(x, x, color="#000000", lw=0.8, ls=":", label="everything by hand")
    ax.plot(x, tandem_labels, color=COLOURS["tandem"], lw=2.2, label="Tandem: human labels")
    for name in ("fixed", "naive", "oracle"):
        ax.plot(
            x,
            np.cumsum(~runs[name].auto),
            color=COLOURS[name],
            lw=1.2,
            ls="--" if name == "oracle" else "-",
            label=f"{POLICY_TITLES[name]}: cases left to people",
        )
    ax.set_xlabel("cases arrived")
    ax.set_ylabel("human labels (cumulative)")
    ax.set_title("Human labels spent")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "labels.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    pos = [r["position"] for r in rec.timeline]
    ver = [r["version"] for r in rec.timeline]
    ax.step(pos, ver, where="post", color="#57606a", lw=1.5, label="active model version")
    ax.set_xlabel("cases arrived")
    ax.set_ylabel("model version")
    ax.set_xlim(0, n)
    ax2 = ax.twinx()
    thr = [
        r["threshold"] if r["state"] == "automating" and r["threshold"] is not None else np.nan
        for r in rec.timeline
    ]
    ax2.step(pos, thr, where="post", color=COLOURS["tandem"], lw=2, label="deployed threshold τ")
    fb = [r["position"] for r in rec.timeline if r["state"] == "fallback"]
    if fb:
        ax2.scatter(fb, [1.0] * len(fb), marker="v", color="#cf222e", s=14, label="fallback")
    ax2.set_ylabel("threshold τ (lower = more automation)")
    ax2.set_ylim(0.45, 1.02)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="lower right", fontsize=8)
    ax.set_title("Model versions and their thresholds")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "versions.png")
    plt.close(fig)


# -------------------------------------------------------------------------------- HTML

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1000px;color:#1f2328;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;
border-bottom:1px solid #d0d7de;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.muted{color:#57606a;font-size:.85rem}img{max-width:100%;border:1px solid #d0d7de;
margin:.5rem 0}.verdict{background:#f6f8fa;border-left:4px solid #1f6feb;padding:.6rem 1rem}
td.why,th.why{text-align:left}td.why{font-size:.8rem;min-width:14rem}
.wide{overflow-x:auto}table.versions{font-size:.8rem}table.versions td,table.versions th{
padding:.25rem .4rem}
"""


def _pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}%"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _flag(v: bool | None) -> str:
    if v is None:
        return "—"
    return '<span class="bad">yes</span>' if v else '<span class="ok">no</span>'


def _worst_cell(name: str, p: dict[str, Any]) -> str:
    if name == "oracle":
        return "—"
    if not p.get("deployed_rules"):
        return "none deployed"
    return f"{_pct(p.get('deployed_true_error_max'), 2)} {_flag(p['deployed_exceeded'])}"


def policy_table_html(measures: dict[str, Any]) -> str:
    head = (
        "<tr><th>policy</th><th>automation</th><th>final quarter</th><th>share of oracle "
        "(final quarter)</th><th>realised error (95% CI)</th><th>exceeded target</th>"
        "<th>worst deployed rule, true error</th><th>human labels</th></tr>"
    )
    rows = []
    for name in POLICY_ORDER:
        p = measures[name]
        ci = p.get("realised_error_interval")
        err = _pct(p["realised_error"], 2)
        if ci:
            err += f" ({_pct(ci[0], 1)}–{_pct(ci[1], 1)})"
        rows.append(
            f"<tr><td>{POLICY_TITLES[name]}</td><td>{_pct(p['automation'])}</td>"
            f"<td>{_pct(p['final_quarter_automation'])}</td>"
            f"<td>{_pct(p['final_quarter_share_of_oracle'], 0)}</td><td>{err}</td>"
            f"<td>{_flag(p['realised_exceeded'])}</td>"
            f"<td>{_worst_cell(name, p)}</td>"
            f"<td>{p['labels_spent']:,}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{path.stem}" src="data:image/png;base64,{data}">'


def _not_certified_because(version: dict[str, Any]) -> str:
    """The version's newest failed attempt in numbers, or why it was not attempted."""
    if version.get("why_not"):
        return str(version["why_not"])
    if version.get("certified"):
        return ""
    reason = (version.get("readiness") or {}).get("reason")
    if reason:
        return str(reason)
    return (
        "no attempt was due while it was the newest version (too few human labels, the "
        "audit sample had reached no new size, or traffic did not match it)"
    )


def why_not_automated(versions: list[dict[str, Any]]) -> str:
    """The latest word on why nothing was certified: the newest version that was either
    judged not ready (its readiness reason) or tested and failed (its first tested step)."""
    for v in reversed(versions):
        reason = (v.get("readiness") or {}).get("reason")
        if reason:
            return f": v{v['version']} was {reason}"
        checkpoint = v.get("checkpoint") or {}
        if v.get("why_not"):
            return (
                f": v{v['version']} was tested on {checkpoint.get('ledger_size_due')} audited "
                f"cases at δ {checkpoint.get('delta', 0):.4f} and failed: {v['why_not']}"
            )
        if checkpoint and not v.get("certified"):
            steps = [s for group in (v.get("tested_steps") or {}).values() for s in group[:1]]
            first = (
                f": the walk's first step (top {steps[0]['coverage']:.0%} of traffic) held "
                f"{steps[0]['errors']} errors in {steps[0]['n']} cases"
                if steps
                else ""
            )
            return (
                f": v{v['version']} was tested on {checkpoint.get('ledger_size_due')} audited "
                f"cases at δ {checkpoint.get('delta', 0):.4f} and failed{first}"
            )
    return ""


def alarms_html(summary: dict[str, Any]) -> str:
    """The fallbacks and drift warnings of the run, each with what it said, and whether it
    was a false alarm: on a shuffled replay the traffic never changes, so an alarm is false
    unless a rule Tandem deployed had a true error above the target."""
    alerts = summary.get("alerts") or []
    if not alerts:
        return "<p>No fallback and no drift warning.</p>"
    alpha = summary["target_error"]
    worst = summary["policies"]["tandem"].get("deployed_true_error_max")
    shuffled = summary.get("order") == "shuffle"
    false_alarm = shuffled and (worst is None or worst <= alpha)
    items = []
    for alert in alerts:
        d = alert.get("details") or {}
        if alert["action"] == "automation.fallback":
            ev = d.get("evidence") or {}
            what = f"fallback: {d.get('reason', '')}"
            if "errors" in ev and "n" in ev:
                what += (
                    f" ({ev['errors']} wrong of {ev['n']} audited automatic answers, lower "
                    f"bound {_pct(ev.get('lower'), 1)})"
                )
        elif alert["action"] == "drift.warning":
            what = "drift warning (widening frozen): " + "; ".join(d.get("warnings") or [])
        else:
            what = "drift warning lifted"
        items.append(f"<li>{html.escape(what)}</li>")
    verdict = (
        '<p class="muted">The order is shuffled, so the traffic never changed, and no '
        f"deployed rule's true error was above {_pct(alpha, 1)}: "
        + ("these were false alarms.</p>" if len(alerts) > 1 else "this was a false alarm.</p>")
        if false_alarm
        else ""
    )
    return f"<ul>{''.join(items)}</ul>{verdict}"


def write_html(out: Path, summary: dict[str, Any]) -> Path:
    m = summary["policies"]
    alpha = summary["target_error"]
    t = m["tandem"]
    why_not = why_not_automated(summary["versions"])
    opening = (
        f"Tandem automated nothing on {summary['rows']:,} cases: no certified threshold "
        f"was deployed{html.escape(why_not)} "
        f"(see the certification attempts in summary.json, versions[].tested_steps and "
        f"versions[].readiness)"
        if not t["auto_answers"]
        else f"Tandem automated <b>{_pct(t['automation'])}</b> of {summary['rows']:,} cases "
        f"({_pct(t['final_quarter_automation'])} in the final quarter, "
        f"{_pct(t['final_quarter_share_of_oracle'], 0)} of what the hindsight oracle could "
        f"there) with a realised error of <b>{_pct(t['realised_error'], 2)}</b> against a "
        f"target of {_pct(alpha, 1)}"
    )
    verdict = (
        f"{opening}; the fixed 0.9 threshold automated "
        f"{_pct(m['fixed']['automation'])} at {_pct(m['fixed']['realised_error'], 2)} error, the "
        f"naive rule {_pct(m['naive']['automation'])} at {_pct(m['naive']['realised_error'], 2)}."
    )
    vrows = []
    for v in summary["versions"]:
        te = v.get("true_error_at_certified_threshold") or {}
        vrows.append(
            f"<tr><td>v{v['version']}</td><td>{html.escape(str(v['family']))}</td>"
            f"<td>{v['training_cases']:,}</td><td>{v.get('ledger_cases') or '—'}</td>"
            f"<td>{_num(v['threshold'])}</td>"
            f"<td>{_pct(v['error_bound'], 2)}</td><td>{_pct(v['coverage'])}</td>"
            f"<td>{_pct(te.get('true_error'), 2) if te else '—'}</td>"
            f"<td>{'yes' if v['deployed'] else 'no'}</td>"
            f'<td class="why">{html.escape(_not_certified_because(v))}</td></tr>'
        )
    versions = (
        '<table class="versions"><tr><th>version</th><th>family</th><th>trained on</th>'
        "<th>ledger</th>"
        "<th>certified τ</th><th>bound</th><th>certified coverage</th>"
        "<th>true error at τ (held-out rows)</th>"
        "<th>served traffic</th>"
        '<th class="why">why it was not certified '
        "(its newest attempt, or why none was made)</th></tr>" + "".join(vrows) + "</table>"
    )
    rules = t.get("rules") or []
    rule_rows = "".join(
        f"<tr><td>v{r['version']}</td><td>{r['threshold']:.4f}</td><td>{r['auto_rows']:,}</td>"
        f"<td>{_pct(r['coverage'])}</td><td>{_pct(r['true_error'], 2)}</td>"
        f"<td>{_flag(r['true_error'] is not None and r['true_error'] > alpha)}</td></tr>"
        for r in rules
    )
    rules_html = (
        "<table><tr><th>version</th><th>τ</th><th>held-out rows above τ</th><th>coverage</th>"
        f"<th>true error</th><th>above {_pct(alpha, 1)}</th></tr>{rule_rows}</table>"
        if rules
        else "<p>Tandem never automated on this stream.</p>"
    )
    task = summary["task"]
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Tandem backtest: {html.escape(Path(summary["dataset"]).name)}</title>
<style>{CSS}</style></head><body>
<h1>Backtest of {html.escape(Path(summary["dataset"]).name)}</h1>
<p class="muted">label column <code>{html.escape(summary["label_column"])}</code> ·
{summary["rows"]:,} rows · order {summary["order"]} (seed {summary["seed"]}) · target error
{_pct(alpha, 1)} at {_pct(summary["confidence"], 0)} confidence · reviewer error
{_pct(summary["reviewer_error"], 1)} · {summary["training_jobs"]} training jobs ·
{summary["fallbacks"]} fallbacks · {summary["elapsed_seconds"]} s</p>
<p class="verdict">{verdict}</p>
<h2>Between "safe" and "best possible"</h2>
{policy_table_html(m)}
<p class="muted">All four policies see the same stream and the same model versions (the scores
each deployed version gave). <i>Fixed</i> automates scores ≥ 0.9 whenever a model exists;
<i>naive</i> takes, before each chunk, the lowest threshold whose observed error on the human
labels seen so far (that the version was not trained on) is within target; the
<i>oracle</i> takes, in hindsight, the lowest threshold whose realised error over the stream is
within target (for the final quarter, the final quarter's own best threshold). "True error" of
a deployed rule (version, τ) is its error on every dataset row it was not trained on: the
proper measure of the promise.</p>
<h2>Automation over time</h2>{_img(out / "automation.png")}
<h2>Realised error against the target and the certified bound</h2>{_img(out / "error.png")}
<h2>Human labels spent</h2>{_img(out / "labels.png")}
<h2>Model versions and thresholds</h2>{_img(out / "versions.png")}
<h2>Rules Tandem deployed, and their true error</h2>{rules_html}
<h2>Fallbacks and drift warnings</h2>{alarms_html(summary)}
<h2>Every model version</h2><div class="wide">{versions}</div>
<h2>Task used</h2><pre>{html.escape(json.dumps(task, indent=2))}</pre>
</body></html>"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def write_outputs(out: Path, rec: Recorded) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    summary, runs = analyse(rec)
    summary = _clean(summary)
    (out / "summary.json").write_text(
        json.dumps(summary, indent=2, default=_json_default), encoding="utf-8"
    )
    write_cases(out / "cases.csv", rec, runs)
    plot_all(out, rec, runs, summary)
    write_html(out, summary)
    return summary
