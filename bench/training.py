"""Training-time and predict-latency-under-training benchmark (issue #4).

1. Training time of the job's training step (``service.ml.pipeline.train_model``: both
   families cross-validated, the winner refitted) on 10,000 and 100,000 labelled cases,
   resampled with replacement from 80% of letter.csv's rows (26 classes, 16 numbers), and
   the trained model's accuracy and log loss on the other 20% (never trained on), beside
   the out-of-fold ones training reports. ``--max-cv-rows 50000,20000`` trains each size
   once per value of ``train_model``'s ``max_cv_rows`` (the same run: the cost of
   cross-validating on fewer rows); ``--datasets letter,credit_data`` adds datasets.
2. Predict p99 of single-case requests through the real app (PostgreSQL, in-process WSGI
   client, every case validated, routed and committed) while idle and while a training
   process runs beside it on the same machine, set up as the training job runs it
   (``service.resources.training_resources``: every core, nice 10), with one training
   thread, and without the lower priority.

Usage:  .venv/bin/python bench/training.py [--sizes 10000,100000] [--hgb-max-iter 200]
            [--max-cv-rows 50000,20000] [--datasets letter,credit_data] [--skip-latency]
Needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (db 12; BENCH_DB and
BENCH_REDIS_URL name others).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DB_NAME = os.environ.get("BENCH_DB", "tandem_bench_learning")
PG = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")


def resample(n: int, seed: int = 0) -> tuple[list[dict[str, Any]], list[str], Any, Any]:
    from service.ml.datasets import load_dataset

    d = load_dataset("letter")
    rng = random.Random(seed)
    idx = [rng.randrange(len(d.rows)) for _ in range(n)]
    return [d.rows[i] for i in idx], [d.labels[i] for i in idx], d.fields, d.label_set


def held_out_resample(
    name: str, n: int, seed: int = 0
) -> tuple[list[dict[str, Any]], list[str], list[dict[str, Any]], list[str], Any, Any]:
    """``n`` training cases resampled with replacement from 80% of the dataset's rows, and
    the other 20% as they are (a test set no training case duplicates)."""
    from service.ml.datasets import load_dataset

    d = load_dataset(name)
    rng = random.Random(seed)
    order = list(range(len(d.rows)))
    rng.shuffle(order)
    pool, test = order[: len(order) * 4 // 5], order[len(order) * 4 // 5 :]
    idx = [pool[rng.randrange(len(pool))] for _ in range(n)]
    return (
        [d.rows[i] for i in idx],
        [d.labels[i] for i in idx],
        [d.rows[i] for i in test],
        [d.labels[i] for i in test],
        d.fields,
        d.label_set,
    )


def train_once(
    n: int, hgb_max_iter: int, max_cv_rows: int | None = None, dataset: str = "letter"
) -> dict[str, Any]:
    """Train as the training job does (its thread count, background priority); the model's
    accuracy and log loss on the held-out rows beside the out-of-fold ones."""
    import numpy as np

    from service.ml.pipeline import MAX_CV_ROWS, log_loss_labels, pipeline_proba, train_model
    from service.resources import training_niceness, training_resources, training_threads

    cv_rows = MAX_CV_ROWS if max_cv_rows is None else max_cv_rows
    rows, labels, test_rows, test_labels, fields, label_set = held_out_resample(dataset, n)
    t0 = time.perf_counter()
    with training_resources():
        trained = train_model(
            rows, labels, fields, label_set, hgb_max_iter=hgb_max_iter, max_cv_rows=cv_rows
        )
    seconds = time.perf_counter() - t0
    proba = pipeline_proba(trained.pipeline, test_rows, fields, label_set)
    truth = np.array([label_set.index(y) for y in test_labels])
    return {
        "dataset": dataset,
        "cases": n,
        "max_cv_rows": cv_rows,
        "seconds": round(seconds, 2),
        "family": trained.family,
        "timings": {k: round(v, 2) for k, v in trained.timings.items()},
        "cv_log_loss": {k: round(v, 4) for k, v in trained.metrics["cv_log_loss"].items()},
        "oof_accuracy": round(trained.metrics["accuracy"], 4),
        "oof_log_loss": round(trained.metrics["log_loss"], 4),
        "test_accuracy": round(float(np.mean(proba.argmax(axis=1) == truth)), 4),
        "test_log_loss": round(log_loss_labels(truth, proba), 4),
        "threads": training_threads(),
        "nice": training_niceness(),
        "load": round(os.getloadavg()[0], 1),
    }


def setup_app() -> tuple[Any, str]:
    from sqlalchemy import create_engine, text

    from service import migrate
    from service.config import Settings
    from service.db import make_engine
    from service.services import accounts
    from service.services.audit import SYSTEM
    from service.uow import unit_of_work
    from tandem.app import create_app

    admin = create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
    admin.dispose()
    url = f"{PG}/{DB_NAME}"
    migrate.upgrade(make_engine(url))
    home = Path("/tmp/tandem-bench-learning")
    home.mkdir(exist_ok=True)
    settings = Settings(
        database_url=url,
        redis_url=REDIS_URL,
        home=home,
        secret_key="bench",
        embedded=False,
        session_cookie_secure=False,
    )
    app = create_app(settings)
    with app.app_context(), unit_of_work() as session:
        token = accounts.create_token(
            session, role="admin", name="bench", task_scope=None, actor=SYSTEM
        ).token
    return app, token


def install_letter_model(app: Any, token: str) -> list[dict[str, Any]]:
    """Task `letter` with an active HGB+LR-selected model trained on 5,000 cases."""
    from sqlalchemy import select

    from bench.common import activate_model
    from service.ml.artifacts import dump_model
    from service.ml.pipeline import train_model
    from service.models import Task
    from service.uow import unit_of_work

    rows, labels, fields, label_set = resample(5000, seed=1)
    client = app.test_client()
    resp = client.post(
        "/api/v1/tasks",
        json={"name": "letter", "labels": label_set, "fields": fields},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status_code == 201, resp.json
    trained = train_model(rows, labels, fields, label_set, hgb_max_iter=50)
    art = dump_model(trained.pipeline)
    with app.app_context(), unit_of_work() as session:
        task = session.scalar(select(Task).where(Task.name == "letter"))
        activate_model(session, task, trained, art, rows)
    return rows


def predict_latencies(app: Any, token: str, rows: list[dict[str, Any]], n: int) -> list[float]:
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}"}
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        resp = client.post(
            "/api/v1/tasks/letter/predict", json={"input": rows[i % len(rows)]}, headers=headers
        )
        out.append(time.perf_counter() - t0)
        assert resp.status_code in (200, 202), resp.json
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--hgb-max-iter", type=int, default=200)
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument(
        "--busy-size", type=int, default=100_000, help="cases trained beside the predicts"
    )
    parser.add_argument(
        "--max-cv-rows", default="", help="values of train_model's max_cv_rows to compare"
    )
    parser.add_argument("--datasets", default="letter")
    parser.add_argument("--skip-training-time", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--train-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_child:
        print(json.dumps(train_once(args.train_child, args.hgb_max_iter)), flush=True)
        return

    if not args.skip_training_time:
        print("## training time (train_model, both families, 3-fold CV + refit)")
        cv_values = [int(x) for x in args.max_cv_rows.split(",") if x] or [None]
        for dataset in args.datasets.split(","):
            for n in [int(x) for x in args.sizes.split(",")]:
                for cv_rows in cv_values:
                    result = train_once(n, args.hgb_max_iter, cv_rows, dataset)
                    print(json.dumps(result), flush=True)
    if args.skip_latency:
        return

    print("## predict latency, single case, in-process WSGI + PostgreSQL commit")
    app, token = setup_app()
    rows = install_letter_model(app, token)
    predict_latencies(app, token, rows, 50)  # warm-up
    idle = predict_latencies(app, token, rows, args.requests)
    print(f"idle: p50 {pct(idle, 0.5):.2f} ms  p99 {pct(idle, 0.99):.2f} ms", flush=True)
    variants = (
        ("job defaults: every core, nice 10", {}),
        ("TANDEM_TRAINING_THREADS=1, nice 10", {"TANDEM_TRAINING_THREADS": "1"}),
        ("every core, no lower priority", {"TANDEM_TRAINING_NICE": "0"}),
    )
    for label, extra in variants:
        child = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--train-child",
                str(args.busy_size),
                "--hgb-max-iter",
                str(args.hgb_max_iter),
            ],
            env={**os.environ, **extra},
            stdout=subprocess.PIPE,
        )
        time.sleep(3.0)  # let it reach the CPU-heavy part
        busy = predict_latencies(app, token, rows, args.requests)
        still_running = child.poll() is None
        child.kill()
        child.wait()
        print(
            f"training beside ({label}): p50 {pct(busy, 0.5):.2f} ms  "
            f"p99 {pct(busy, 0.99):.2f} ms  ratio p99 {pct(busy, 0.99) / pct(idle, 0.99):.2f}x"
            f"  (training still running at the end: {still_running})",
            flush=True,
        )
    print(f"median idle {statistics.median(idle) * 1000:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
