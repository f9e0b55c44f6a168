"""bench/fts_detail: the FTS5 trigram table's cost per row, size and GLOB time at each detail level.

The search index (storage.search_index) is an FTS5 trigram table; this times filling one with
100,000 bodies of the ingest bench's kind (name, args, kwargs, as storage.search_index joins
them), in batches of 2,000, at detail=full, column and none, and a GLOB for a rare text on each.

    python bench/fts_detail.py [--rows 100000]
"""
from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.ingest.generator import random_args  # noqa: E402
from storage.search_index import glob_pattern  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    rng = random.Random(1)
    docs = []
    for i in range(args.rows):
        a, k = random_args(rng)
        docs.append((f"id{i}", "\n".join(("tasks.orders.process", a, k))))
    probe = docs[len(docs) * 7 // 9][1].split("\n")[1][8:20]
    print(f"{len(docs):,} bodies, {sum(len(d[1]) for d in docs) // len(docs)} bytes each on average; "
          f"sqlite {sqlite3.sqlite_version}; load average {os.getloadavg()[0]:.2f}; probe {probe!r}")
    with tempfile.TemporaryDirectory(prefix="taskmon-fts-") as tmp:
        for detail in ("full", "column", "none"):
            path = os.path.join(tmp, f"{detail}.db")
            con = sqlite3.connect(path)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(f"CREATE VIRTUAL TABLE t USING fts5(task_id UNINDEXED, body, "
                        f"tokenize='trigram case_sensitive 1', detail={detail})")
            t0 = time.perf_counter()
            for s in range(0, len(docs), 2000):
                with con:
                    con.executemany("INSERT INTO t (task_id, body) VALUES (?, ?)", docs[s:s + 2000])
            per_row = (time.perf_counter() - t0) / len(docs)
            t0 = time.perf_counter()
            for _ in range(10):
                found = con.execute("SELECT task_id FROM t WHERE body GLOB ?", (glob_pattern(probe),)).fetchall()
            glob_ms = (time.perf_counter() - t0) / 10 * 1000
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            con.close()
            print(f"detail={detail:<7} {per_row * 1e6:6.0f} us per row  {os.path.getsize(path) / 2**20:6.0f} MiB  "
                  f"GLOB {glob_ms:5.1f} ms ({len(found)} found)")


if __name__ == "__main__":
    main()
