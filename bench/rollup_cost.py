"""bench/rollup_cost: what the rollup triggers cost the writer, SQLite, writer alone.

Feeds the same 200,000 events (50,000 lifecycles, interleaved as a live stream would bring them)
through the real Writer in batches of 10,000 into a fresh SQLite file, with the triggers that keep
run_rollups, run_rollups_hourly and run_totals, with those and the worker and exception hourly
rollups' (storage.rollup_dims), and without any; rounds alternate so that a machine's load falls
on all alike. Prints events/s per round and the medians.

    python bench/rollup_cost.py [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.ingest.buffer import Batch, Taken  # noqa: E402
from monitor.ingest.writer import Writer  # noqa: E402
from storage.db import make_engine, upgrade  # noqa: E402
from storage.rollups import drop_trigger_ddl, trigger_ddl  # noqa: E402
from tests.eventgen import T0, lifecycle  # noqa: E402


def events(n_tasks: int = 50_000) -> list[dict]:
    rng = random.Random(1)
    out = []
    for i in range(n_tasks):
        out += lifecycle(f"t{i}", name=f"n{i % 13}", t=T0 + i * 0.002, fail=i % 10 == 0)
    out.sort(key=lambda e: e["timestamp"] + rng.uniform(0, 0.5))
    return out


VARIANTS = ("no rollup triggers", "run rollups and totals", "every rollup trigger (workers, exceptions too)")


def one_round(stream: list[dict], variant: str) -> float:
    with tempfile.TemporaryDirectory(prefix="taskmon-rollup-cost-") as tmp:
        engine = make_engine(f"sqlite:///{os.path.join(tmp, 'cost.db')}")
        upgrade(engine)
        if variant != VARIANTS[2]:
            with engine.begin() as conn:
                for ddl in drop_trigger_ddl("sqlite"):
                    conn.exec_driver_sql(ddl)
                if variant == VARIANTS[1]:
                    for ddl in trigger_ddl("sqlite", dims=False):
                        conn.exec_driver_sql(ddl)
        writer = Writer(engine, None, field_max_bytes=16384)
        t0 = time.perf_counter()
        for i in range(0, len(stream), 10_000):
            assert writer.write(Taken([Batch("pubsub", stream[i:i + 10_000])], []))
        rate = len(stream) / (time.perf_counter() - t0)
        engine.dispose()
        return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    stream = events()
    print(f"{len(stream):,} events; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for variant in VARIANTS:
            rates[variant].append(one_round(stream, variant))
            print(f"round {r + 1}: {variant}: {rates[variant][-1]:,.0f} events/s")
    without = statistics.median(rates[VARIANTS[0]])
    for variant in VARIANTS:
        median = statistics.median(rates[variant])
        print(f"median, {variant}: {median:,.0f} events/s ({100 * (1 - median / without):.0f}% below none)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
