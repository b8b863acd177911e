"""How well the readiness check predicts a certification attempt, offline.

Trains the product's model (``service.ml.train_model``, both families) on the first
``--train`` rows of a shuffled dataset, takes the next ``--ledger`` rows as the audit ledger
and the 2,000 after as recent traffic, runs ``service.policy.readiness.assess`` with the
first slice δ/2 and, whatever its verdict, the exact test on the walk readiness picked (or on
the full grid when it is not ready). One line per shuffled order:

    .venv/bin/python scripts/readiness_check.py service/datasets/credit_data.csv Status \\
        --train 1245 --ledger 507 --alpha 0.10 --orders 6

Columns: order, chosen family, ready?, predicted pass probability, coverage of the point
readiness aims at, out-of-fold cases/errors there, ledger cases there, and the test's
result (certified?, coverage). docs/policy.md ("Readiness") quotes its results.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np

from service.ml.pipeline import pipeline_proba, train_model
from service.policy import certify, threshold_grid
from service.policy.readiness import assess
from tandem.simulate.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", type=Path)
    ap.add_argument("label")
    ap.add_argument("--train", type=int, default=1245)
    ap.add_argument("--ledger", type=int, default=507)
    ap.add_argument("--alpha", type=float, default=0.10)
    ap.add_argument("--delta", type=float, default=0.025, help="the attempt's slice")
    ap.add_argument("--orders", type=int, default=6)
    ap.add_argument("--hgb-max-iter", type=int, default=50)
    ap.add_argument("--families", default="", help="comma-separated, default: all")
    a = ap.parse_args()
    ds = load_dataset(a.csv, label=a.label)
    idx = list(range(len(ds.inputs)))
    for order in range(a.orders):
        random.Random(order).shuffle(idx)
        tr = idx[: a.train]
        led = idx[a.train : a.train + a.ledger]
        rec = idx[a.train + a.ledger : a.train + a.ledger + 2000]
        model = train_model(
            [ds.inputs[i] for i in tr],
            [ds.truth[i] for i in tr],
            ds.fields,
            ds.labels,
            hgb_max_iter=a.hgb_max_iter,
            **({"families": tuple(a.families.split(","))} if a.families else {}),
        )
        y = np.array([ds.labels.index(v) for v in model.oof_labels])
        oof_scores = model.oof_proba.max(axis=1)
        oof_correct = model.oof_proba.argmax(axis=1) == y

        def scored(rows: list[int], m=model) -> tuple[np.ndarray, np.ndarray]:
            p = pipeline_proba(m.pipeline, [ds.inputs[i] for i in rows], ds.fields, ds.labels)
            pred = np.array([ds.labels[j] for j in p.argmax(axis=1)])
            return p.max(axis=1), pred == np.array([ds.truth[i] for i in rows])

        ledger_scores, ledger_correct = scored(led)
        recent_scores, _ = scored(rec)
        grid = threshold_grid(
            recent_scores, ledger_scores, alpha=a.alpha, delta=a.delta, start_share=0
        )
        verdict = assess(
            oof_scores,
            oof_correct,
            ledger_scores,
            grid,
            recent_scores,
            alpha=a.alpha,
            delta=a.delta,
        )
        if verdict.start_threshold is not None:
            grid = [t for t in grid if t <= verdict.start_threshold]
        cert = certify(
            ledger_scores,
            ledger_correct,
            grid,
            alpha=a.alpha,
            delta=a.delta,
            coverage_scores=recent_scores,
        )
        print(
            f"{order} {model.family:24s} ready={verdict.ready!s:5s} "
            f"p={verdict.pass_probability:.2f} coverage={verdict.coverage:.2f} "
            f"oof={verdict.oof_errors}/{verdict.oof_cases} ledger={verdict.ledger_cases} "
            f"| certified={cert.certified!s:5s} coverage={cert.coverage:.2f}"
        )


if __name__ == "__main__":
    main()
