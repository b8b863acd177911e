"""Coverage of the dashboard's weighted interval (service.policy.weighted_rate), by simulation.

A window of traffic holds groups of cases with their own true error and labelling
probability π: automatic answers are labelled only when the audit lottery picks them (π = the
audit rate in force, which changes over time), cases sent to people are all labelled (π = 1).
Per scenario the script draws the window's true outcomes, then the lottery, computes the
interval from the labelled cases and checks whether it holds the window's true rate (over all
its cases, labelled or not). It prints coverage and the two tail misses for
the current interval and for the one used before (Clopper–Pearson on Kish's n_eff).

    .venv/bin/python scripts/interval_coverage.py [--reps 4000] [--seed 1]

Nominal: 95% two-sided, each tail ≤ 2.5%. Monte Carlo standard error at 4,000 repetitions:
0.35 points at 95%.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import stats

from service.policy import weighted_rate

Group = tuple[int, float, float]  # (cases, true error, labelling probability π)

#: Mixtures of audited automatic answers (π < 1) and cases sent to people (π = 1), as in the
#: override rate; and automatic answers only, audited at a rate that changed (live error).
SCENARIOS: list[tuple[Group, ...]] = [
    ((1000, 0.05, 0.05), (1000, 0.00, 1.0)),
    ((1000, 0.20, 0.05), (1000, 0.00, 1.0)),
    ((400, 0.20, 0.05), (1000, 0.02, 1.0)),
    ((4000, 0.05, 0.05), (1000, 0.00, 1.0)),
    ((4000, 0.02, 0.05), (200, 0.20, 1.0)),
    ((2000, 0.02, 0.05), (200, 0.00, 1.0)),
    ((2000, 0.01, 0.05), (50, 0.10, 1.0)),
    ((1000, 0.02, 0.30), (500, 0.30, 1.0)),
    ((600, 0.10, 0.05), (20, 0.50, 1.0)),
    ((4000, 0.20, 0.05), (10, 0.20, 1.0)),
    ((400, 0.10, 0.50), (1000, 0.01, 0.10)),
    ((300, 0.02, 0.30), (3000, 0.05, 0.05)),
    ((1000, 0.01, 0.20), (1000, 0.04, 0.05)),
    ((200, 0.05, 0.10),),
    # The limit: a group expecting 2 labelled cases is often not seen at all.
    ((1000, 0.005, 0.30), (100, 0.50, 0.02)),
]


def kish_interval(values: np.ndarray, probs: np.ndarray, confidence: float) -> tuple[float, float]:
    """The interval weighted_rate used before: Clopper–Pearson on Kish's effective size."""
    w = 1.0 / probs
    est = float(np.sum(w * values) / np.sum(w))
    n_eff = float(np.sum(w) ** 2 / np.sum(w**2))
    k = est * n_eff
    t = (1.0 - confidence) / 2.0
    lo = 0.0 if k <= 0 else float(stats.beta.ppf(t, k, n_eff - k + 1))
    hi = 1.0 if k >= n_eff else float(stats.beta.ppf(1 - t, k + 1, n_eff - k))
    return lo, hi


def coverage(
    scenario: tuple[Group, ...], reps: int, rng: np.random.Generator, confidence: float = 0.95
) -> dict[str, tuple[float, float, float]]:
    """{method: (coverage, share of truths below the interval, share above)}."""
    miss = {m: np.zeros(2) for m in ("current", "Kish (before)")}
    done = 0
    for _ in range(reps):
        truth_k = truth_n = 0
        values, probs = [], []
        for n, error, pi in scenario:
            y = rng.random(n) < error
            truth_k, truth_n = truth_k + int(y.sum()), truth_n + n
            picked = y[rng.random(n) < pi]
            values.append(picked.astype(float))
            probs.append(np.full(picked.size, pi))
        v, p = np.concatenate(values), np.concatenate(probs)
        if v.size == 0:
            continue
        truth = truth_k / truth_n
        r = weighted_rate(v, p, confidence)
        for m, (lo, hi) in (
            ("current", (r.lower, r.upper)),
            ("Kish (before)", kish_interval(v, p, confidence)),
        ):
            miss[m] += (truth < lo, truth > hi)
        done += 1
    return {m: (1 - float(x.sum()) / done, x[0] / done, x[1] / done) for m, x in miss.items()}


def describe(scenario: tuple[Group, ...]) -> str:
    return " + ".join(f"{n:,} at {e * 100:g}% error, π = {pi * 100:g}%" for n, e, pi in scenario)


def random_mixtures(count: int, reps: int, rng: np.random.Generator) -> None:
    worst: list[tuple[float, float, tuple[Group, ...]]] = []
    while len(worst) < count:
        scenario = tuple(
            (
                int(rng.choice([10, 30, 100, 300, 1000, 3000])),
                float(rng.choice([0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5])),
                float(rng.choice([0.02, 0.05, 0.1, 0.3, 0.5, 1.0])),
            )
            for _ in range(int(rng.integers(1, 4)))
        )
        if min(n * pi for n, _, pi in scenario) < 5:
            continue
        cov, below, above = coverage(scenario, reps, rng)["current"]
        worst.append((cov, max(below, above), scenario))
    worst.sort(key=lambda x: x[0])
    se = (0.95 * 0.05 / reps) ** 0.5
    print(f"{count} random mixtures, {reps} windows each (standard error {se:.1%} at 95%)")
    print(
        f"lowest coverage {worst[0][0]:.1%} ({describe(worst[0][2])}); "
        f"largest tail miss {max(w[1] for w in worst):.1%}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--random",
        type=int,
        default=0,
        help="also N random mixtures (1–3 groups, each "
        "expecting ≥ 5 labelled cases), --random-reps windows each: worst coverage and tail",
    )
    ap.add_argument("--random-reps", type=int, default=300)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    if a.random:
        random_mixtures(a.random, a.random_reps, rng)
        return
    print(
        f"{a.reps:,} windows per scenario, nominal 95%; cells: coverage (truth below / "
        "above the interval)\n"
    )
    print(
        "| window: cases, true error, labelling probability π | current interval "
        "| Kish n_eff (before) |"
    )
    print("|---|---|---|")
    for sc in SCENARIOS:
        c = coverage(sc, a.reps, rng)
        cells = " | ".join(f"{v[0]:.1%} ({v[1]:.1%} / {v[2]:.1%})" for v in c.values())
        print(f"| {describe(sc)} | {cells} |")


if __name__ == "__main__":
    main()
