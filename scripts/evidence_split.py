"""How the cold-start split between training and evidence moves the first certification.

While nothing is automated every case goes to a person; the audit draw (rate π, the task's
``cold_start_audit_rate``) decides only which labels train the model (1 − π) and which are
the ledger a certification is tested on (π). More evidence passes smaller errors; fewer
training labels make a weaker model. This measures the trade-off offline, with the true
error of every region known from the rows no arm ever sees:

* for L labelled cases, draw the split at rate π, train the product's pipeline
  (``service.ml.pipeline.build_pipeline``, one family) on the training share, score the
  ledger and the remaining rows;
* for each region (the top q of scores, q = 5%, 10%, …, 95%), its true error e on the
  remaining rows, its ledger count n, and the probability that the exact test passes it,
  P(Binomial(n, e) ≤ k*) with k* the largest k with BinomCDF(k; n, α) ≤ δ_a;
* the arm's value at L: the widest q that passes with probability ≥ 0.7 (what the readiness
  check aims at, here with the truth instead of an estimate), averaged over ``--reps`` draws.

Arms: π = 0.3 (the default), π = 0.5, and "frozen" (π = 0.3, but the model is the one trained
when L/1.5 labels were in, and every label after it is evidence too: the design the coverage
issue measured in a fixed-model simulation). An idealised comparison (the region is chosen
with the truth; one attempt at δ_a), not a replay: ``tandem simulate`` measures the product.

    .venv/bin/python scripts/evidence_split.py service/datasets/credit_data.csv Status \\
        --alpha 0.10 --family logistic_regression --labels 1000,1300,1600,2000,2600
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy import stats

from service.ml.frame import rows_to_frame
from service.ml.pipeline import build_pipeline
from tandem.simulate.data import load_dataset

QUANTILES = np.arange(0.05, 1.0, 0.05)
ARMS = (("π 0.3", 0.3, False), ("π 0.5", 0.5, False), ("frozen, π 0.3", 0.3, True))


def k_star(n: int, alpha: float, delta: float) -> int:
    """Largest error count that still passes at n cases (−1: none)."""
    k = int(stats.binom.ppf(delta, n, alpha))
    while k >= 0 and stats.binom.cdf(k, n, alpha) > delta:
        k -= 1
    return k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path)
    ap.add_argument("label")
    ap.add_argument("--alpha", type=float, required=True)
    ap.add_argument("--delta", type=float, default=0.025, help="the attempt's slice δ_a")
    ap.add_argument("--family", default="logistic_regression")
    ap.add_argument("--labels", default="1000,1300,1600,2000,2600")
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--hgb-max-iter", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ds = load_dataset(args.csv, args.label)
    frame = rows_to_frame(ds.inputs, ds.fields)
    truth = np.asarray([str(t) for t in ds.truth])
    rng = np.random.default_rng(args.seed)
    print(f"{args.csv.name}, α {args.alpha}, δ_a {args.delta}, {args.family}, {args.reps} draws")
    print("| labels | " + " | ".join(name for name, _, _ in ARMS) + " |")
    print("|---:|" + "---:|" * len(ARMS))
    for n_labels in (int(x) for x in args.labels.split(",")):
        widest: dict[str, list[float]] = {name: [] for name, _, _ in ARMS}
        for _ in range(args.reps):
            order = rng.permutation(len(truth))
            labelled, unseen = order[:n_labels], order[n_labels:]
            flagged = rng.random(n_labels)  # one draw per case, shared by the arms
            for name, pi, frozen in ARMS:
                if frozen:
                    cut = int(n_labels / 1.5)
                    train = labelled[:cut][flagged[:cut] >= pi]
                    ledger = np.concatenate([labelled[:cut][flagged[:cut] < pi], labelled[cut:]])
                else:
                    train, ledger = labelled[flagged >= pi], labelled[flagged < pi]
                model = build_pipeline(
                    ds.fields, args.family, hgb_max_iter=args.hgb_max_iter, n_rows=len(train)
                ).fit(frame.iloc[train], truth[train])
                p_unseen = model.predict_proba(frame.iloc[unseen])
                s_unseen = p_unseen.max(axis=1)
                right = model.classes_[p_unseen.argmax(axis=1)] == truth[unseen]
                s_ledger = model.predict_proba(frame.iloc[ledger]).max(axis=1)
                best = 0.0
                for q in QUANTILES:
                    tau = np.quantile(s_unseen, 1 - q)
                    error = 1.0 - right[s_unseen >= tau].mean()
                    n = int((s_ledger >= tau).sum())
                    k = k_star(n, args.alpha, args.delta) if n else -1
                    if k >= 0 and stats.binom.cdf(k, n, error) >= 0.7:
                        best = max(best, float(q))
                widest[name].append(best)
        cells = " | ".join(f"{np.mean(v):.0%}" for v in widest.values())
        print(f"| {n_labels:,} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
