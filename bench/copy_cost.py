"""What PostgreSQL alone costs to store a 1,000-case batch (issue #8's batch target).

Copies 1,000-row batches of a real case row into ``cases`` of the benchmark database left
by ``bench/predict.py`` (run that first), three ways, in one sitting:

1. as Tandem stores them (foreign keys and every index);
2. with the foreign-key triggers disabled;
3. with foreign keys but only the primary-key index.

Variants 2 and 3 are NOT options for the product (the foreign keys and indexes are what keep
cases consistent and the queue fast); they show where the database's time goes. The
database is a scratch copy: indexes are recreated and triggers re-enabled at the end.

Usage:  .venv/bin/python bench/copy_cost.py [--batches 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from typing import Any

import psycopg

DSN = "postgresql://postgres@127.0.0.1:5432/tandem_bench_predict"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--size", type=int, default=1000)
    args = parser.parse_args()
    conn = psycopg.connect(DSN)
    columns = [
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'cases' ORDER BY ordinal_position"
        )
    ]
    template = conn.execute("SELECT * FROM cases LIMIT 1").fetchone()
    if template is None:
        raise SystemExit("no case in tandem_bench_predict: run bench/predict.py first")
    conn.rollback()
    id_at = columns.index("id")

    def batch() -> list[list[Any]]:
        out = []
        for _ in range(args.size):
            row = [json.dumps(v) if isinstance(v, dict | list) else v for v in template]
            row[id_at] = uuid.uuid4().hex
            out.append(row)
        return out

    def timed(label: str) -> None:
        seconds = []
        for _ in range(args.batches):
            rows = batch()
            t0 = time.perf_counter()
            with (
                conn.transaction(),
                conn.cursor().copy(f"COPY cases ({', '.join(columns)}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            seconds.append(time.perf_counter() - t0)
        median = statistics.median(seconds) * 1000
        print(
            f"{label:<45} median {median:6.1f} ms  min {min(seconds) * 1000:6.1f} ms  "
            f"({args.size / statistics.median(seconds):,.0f} rows/s)",
            flush=True,
        )

    timed("as stored: foreign keys + every index")
    conn.execute("ALTER TABLE cases DISABLE TRIGGER ALL")
    conn.commit()
    try:
        timed("foreign-key triggers disabled")
    finally:
        conn.execute("ALTER TABLE cases ENABLE TRIGGER ALL")
        conn.commit()
    definitions = [
        (r[0], r[1])
        for r in conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes "
            "WHERE tablename = 'cases' AND indexname <> 'pk_cases'"
        )
    ]
    for name, _ in definitions:
        conn.execute(f'DROP INDEX "{name}"')
    conn.commit()
    try:
        timed("foreign keys, primary-key index only")
    finally:
        for _, definition in definitions:
            conn.execute(definition)
        conn.commit()
    conn.close()


if __name__ == "__main__":
    main()
