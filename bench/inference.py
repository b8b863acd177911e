"""Compare per-call cost of the scikit-learn Pipeline and the compiled Predictor.

Usage: .venv/bin/python bench/inference.py   (from the repo root)
Models are fitted on the first 3,000 rows (HGB: 100 iterations); timings are medians.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, not installed

from service.ml.datasets import load_dataset
from service.ml.fast import compile_predictor
from service.ml.frame import rows_to_frame
from service.ml.pipeline import build_pipeline, pipeline_proba


def _time(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds per call over ``repeat`` calls (after one warm-up)."""
    fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def _bench_case(name: str, family: str) -> None:
    """Fit one model, check the predictor compiled, print the four timings."""
    d = load_dataset(name)
    n = 3000
    pipe = build_pipeline(d.fields, family, n_rows=n)
    pipe.fit(rows_to_frame(d.rows[:n], d.fields), d.labels[:n])
    pred = compile_predictor(pipe, d.fields, d.label_set)
    assert pred.compiled, pred.reason
    one = [d.rows[n + 1]]
    batch = d.rows[-1000:]
    p1 = _time(lambda: pipeline_proba(pipe, one, d.fields, d.label_set), 300)
    f1 = _time(lambda: pred.predict_proba_rows(one), 2000)
    pb = _time(lambda: pipeline_proba(pipe, batch, d.fields, d.label_set), 20)
    fb = _time(lambda: pred.predict_proba_rows(batch), 20)
    print(
        f"{name:12} {family:24} {p1 * 1e3:9.3f}ms {f1 * 1e3:9.3f}ms "
        f"{pb * 1e3:8.2f}ms {fb * 1e3:8.2f}ms"
    )


def main() -> None:
    cases = [
        ("credit_data", "logistic_regression"),
        ("credit_data", "hist_gradient_boosting"),
        ("fine_foods", "logistic_regression"),
        ("fine_foods", "hist_gradient_boosting"),
    ]
    print(
        f"{'dataset':12} {'family':24} {'pipe 1 row':>11} {'fast 1 row':>11} "
        f"{'pipe 1000':>10} {'fast 1000':>10}"
    )
    for name, family in cases:
        _bench_case(name, family)


if __name__ == "__main__":
    main()
