"""Who waits on whom: sample PostgreSQL's backends of one database every 50 ms, then line the
lock waits up with the slow requests of a `tandem serve` JSON access log.

    .venv/bin/python bench/pg_sample.py sample DB OUT.jsonl SECONDS
    .venv/bin/python bench/pg_sample.py report OUT.jsonl [ACCESS.log] [--slow-ms 700]

``sample`` records, per tick, every non-idle backend of DB (state, wait event, the first
160 characters of its statement, the pids blocking it: ``pg_blocking_pids``), and once a
second the live/dead tuples of the busiest tables and the oldest snapshots. ``report`` prints
what the backends were doing (samples per state / wait / statement), which statement waited
on which, second by second where waits piled up, and the requests slower than ``--slow-ms``
by second, so a latency tail can be matched with the lock that caused it (bench/README.md,
"The claim tail, explained").
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import psycopg

ACTIVITY = (
    "SELECT pid, backend_type, state, wait_event_type, wait_event,"
    " left(regexp_replace(query, '\\s+', ' ', 'g'), 160), pg_blocking_pids(pid)"
    " FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
    " AND state IS DISTINCT FROM 'idle'"
)
TABLES = (
    "SELECT relname, n_live_tup, n_dead_tup FROM pg_stat_user_tables"
    " WHERE relname IN ('cases', 'tasks', 'jobs', 'reviews', 'retrain_labels')"
)


def sample(db: str, out: Path, seconds: float) -> None:
    conn = psycopg.connect(f"host=127.0.0.1 user=postgres dbname={db}", autocommit=True)
    end = time.time() + seconds
    last = 0.0
    with out.open("w") as sink:
        while time.time() < end:
            t = time.time()
            row: dict[str, object] = {
                "t": t,
                "act": [list(a) for a in conn.execute(ACTIVITY, (db,)).fetchall()],
            }
            if t - last >= 1:
                last = t
                row["tables"] = [list(x) for x in conn.execute(TABLES).fetchall()]
            sink.write(json.dumps(row, default=str) + "\n")
            time.sleep(max(0.0, 0.05 - (time.time() - t)))


def report(samples: Path, access_log: Path | None, slow_ms: float) -> None:
    states: Counter[tuple[str, str, str]] = Counter()
    waits: Counter[tuple[str, str]] = Counter()
    by_second: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for text in samples.read_text().splitlines():
        tick = json.loads(text)
        acts = {a[0]: a for a in tick["act"]}
        second = time.strftime("%H:%M:%S", time.gmtime(tick["t"]))
        for _pid, kind, state, _wtype, wevent, query, blockers in tick["act"]:
            if kind != "client backend":
                continue
            states[(state or "", wevent or "", query[:70])] += 1
            for b in blockers or []:
                blocker = acts.get(b)
                pair = (query[:45], f"{blocker[2]}: {blocker[5][:45]}" if blocker else "?")
                waits[pair] += 1
                by_second[second][pair] += 1
    print("samples (50 ms each) per state, wait event, statement:")
    for (state, event, query), n in states.most_common(15):
        print(f"{n:>6}  {state:<20} {event:<14} {query}")
    print("\nwaiting statement  <-  what the blocking backend was doing:")
    for (waiter, blocker), n in waits.most_common(12):
        print(f"{n:>6}  {waiter:<46} <- {blocker}")
    print("\nseconds with 4+ waiting samples:")
    for second in sorted(by_second):
        total = sum(by_second[second].values())
        if total >= 4:
            top = ", ".join(
                f"{w[:20]} <- {b[:34]} x{n}" for (w, b), n in by_second[second].most_common(2)
            )
            print(f"  {second}  {total:>3}  {top}")
    if access_log is None:
        return
    print(f"\nrequests slower than {slow_ms:.0f} ms (access log):")
    slow: dict[str, list[str]] = defaultdict(list)
    for text in access_log.read_text().splitlines():
        if text.startswith('{"remote"'):
            entry = json.loads(text)
            if entry["duration_ms"] > slow_ms:
                endpoint = entry["path"].rstrip("/").split("/")[-1]
                slow[entry["time"][11:19]].append(f"{endpoint} {entry['duration_ms']:.0f}")
    for second in sorted(slow):
        print(f"  {second}  {', '.join(slow[second])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("db")
    s.add_argument("out", type=Path)
    s.add_argument("seconds", type=float)
    r = sub.add_parser("report")
    r.add_argument("samples", type=Path)
    r.add_argument("access_log", type=Path, nargs="?")
    r.add_argument("--slow-ms", type=float, default=700)
    args = parser.parse_args()
    if args.command == "sample":
        sample(args.db, args.out, args.seconds)
    else:
        report(args.samples, args.access_log, args.slow_ms)


if __name__ == "__main__":
    main()
