"""Write a credit_data history whose class mix turns part-way, for a file-order backtest.

The bundled credit_data.csv shuffled into two eras: 1,800 cases with 5% "bad", then 1,200 with
70% "bad" (the same rows, no duplicates). Replayed in file order with `tandem simulate`, it
shows what certification and the live watch do when traffic stops looking like the evidence
(docs/backtest.md, "A stream that turns").

    python scripts/turned_stream.py /tmp/credit_turn.csv
    tandem simulate /tmp/credit_turn.csv --label Status --order file --target-error 0.10 \\
        --hgb-max-iter 50 --out /tmp/turn
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "service" / "datasets" / "credit_data.csv"


def main(out: Path, seed: int = 1) -> None:
    with SOURCE.open(newline="") as f:
        rows = list(csv.DictReader(f))
    good = [r for r in rows if r["Status"] == "good"]
    bad = [r for r in rows if r["Status"] == "bad"]
    rng = random.Random(seed)
    rng.shuffle(good)
    rng.shuffle(bad)
    before = good[:1710] + bad[:90]
    after = good[1710:2070] + bad[90:930]
    rng.shuffle(before)
    rng.shuffle(after)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(before + after)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
