"""Do taskmon's writes stall concurrent readers? Read latency while the writer ingests, on PostgreSQL.

The writer takes the generator's events as the daemon's writer thread does (bench/ingest/writer_only.py);
meanwhile reader threads, each on its own connection, loop over what the detector sweep and the
API run against task_runs, and one thread updates rows the writer is writing (the sweep's
verdicts: a row lock, so it waits for the writer's transaction to commit). Prints each reader's
query count, median, p99 and max latency, and how long the writer's transactions held their
locks (BEGIN to the end of COMMIT):

    python bench/ingest/read_latency.py --events 300000
    python bench/ingest/read_latency.py --db postgresql+psycopg://postgres@127.0.0.1:5432/test --batch 50000
    python bench/ingest/read_latency.py --one-per-batch     # one transaction per batch, as before

It creates and drops a database of its own on that server.
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import generator  # noqa: E402

from monitor.ingest.buffer import Batch, EventBuffer  # noqa: E402
from monitor.ingest.prepare import Preparer  # noqa: E402
from monitor.ingest.writer import TRANSACTION_ROWS, TRANSACTION_SECONDS, TransactionSize, Writer  # noqa: E402
from monitor.sources import decode_kombu_message  # noqa: E402
from storage.db import make_engine, upgrade  # noqa: E402
from storage.detection import started_before, waiting_since_before  # noqa: E402
from storage.runs import row_plan  # noqa: E402
from storage.schema import task_runs  # noqa: E402


def sweep_reads(conn, now: datetime) -> None:
    started_before(conn, now - timedelta(hours=1))
    waiting_since_before(conn, ["PENDING", "RECEIVED"], now - timedelta(hours=1))


def api_reads(conn, now: datetime) -> None:
    # The list page's newest runs, and a count by state.
    conn.execute(select(task_runs.c.task_id, task_runs.c.state, task_runs.c.name)
                 .order_by(task_runs.c.seen_at.desc()).limit(50)).all()
    conn.execute(select(task_runs.c.state, func.count()).group_by(task_runs.c.state)).all()


class Reader(threading.Thread):
    def __init__(self, name: str, engine, work, stop: threading.Event):
        super().__init__(name=name, daemon=True)
        self.engine, self.work, self.stop = engine, work, stop
        self.latencies: list[float] = []
        self.errors = 0

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            try:
                with self.engine.begin() as conn:
                    self.work(conn, datetime.now(timezone.utc))
            except Exception:  # noqa: BLE001 - counted and shown: a bench keeps measuring
                self.errors += 1
            self.latencies.append(time.perf_counter() - started)
            time.sleep(0.005)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--batch", type=int, default=50_000, help="events per batch (the daemon's --batch-size)")
    parser.add_argument("--transaction-seconds", type=float, default=TRANSACTION_SECONDS,
                        help="how long a writer transaction should last (default: %(default)s)")
    parser.add_argument("--transaction-rows", type=int, default=TRANSACTION_ROWS,
                        help="most runs per writer transaction (default: %(default)s)")
    parser.add_argument("--one-per-batch", action="store_true",
                        help="one transaction per batch, as the writer did before transactions were sized")
    parser.add_argument("--db", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                        help="PostgreSQL server URL (default: %(default)s)")
    args = parser.parse_args(argv)

    plan = generator.build_plan(args.events, 40_000, seed=11)
    payloads = [cmd.rsplit(b"\r\n", 2)[-2] for cmd in plan.commands]
    del plan
    events = [event for payload in payloads for event in decode_kombu_message(payload)]
    task_ids = list({e["uuid"] for e in events if "uuid" in e})
    del payloads
    gc.collect()
    gc.freeze()

    admin = make_url(args.db).set(drivername="postgresql").render_as_string(hide_password=False)
    dbname = f"taskmon_readlat_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{dbname}"')
    engine = make_engine(make_url(args.db).set(database=dbname).render_as_string(hide_password=False))
    preparer = None
    try:
        upgrade(engine)
        rng = random.Random(3)

        def verdicts(conn, now):  # what apply_verdict does to a row: waits for its row lock
            conn.execute(text("UPDATE task_runs SET updated_at = updated_at WHERE task_id = :id"),
                         {"id": rng.choice(task_ids)})

        stop = threading.Event()
        readers = [Reader("detector sweep reads", engine, sweep_reads, stop),
                   Reader("API reads", engine, api_reads, stop),
                   Reader("row updates (verdicts)", engine, verdicts, stop)]
        # How long each of the writer's transactions held its locks: BEGIN to the end of COMMIT.
        held: list[float] = []

        class TimedWriter(Writer):
            def _transaction(self, *parts):
                started = time.perf_counter()
                try:
                    return super()._transaction(*parts)
                finally:
                    held.append(time.perf_counter() - started)

        size = (TransactionSize(1e9, 10**9, start=10**9) if args.one_per_batch
                else TransactionSize(args.transaction_seconds, args.transaction_rows))
        buffer = EventBuffer(10**8)
        preparer = Preparer(row_plan(engine.dialect), 16384, processes=1)
        writer = TimedWriter(engine, buffer, field_max_bytes=16384, batch_size=args.batch, preparer=preparer,
                        transaction=size)
        for i in range(0, len(events), 1000):
            buffer.put(Batch.encode("bench", events[i:i + 1000]))
        for reader in readers:
            reader.start()
        time.sleep(1.0)  # the readers' first connections and plans, before the writer starts
        started = time.perf_counter()
        writer.start()
        while writer.counters.get("events_written") < len(events) and writer.is_alive():
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        stop.set()
        for reader in readers:
            reader.join()
        writer.stop(time.monotonic() + 10)
        writer.join()
        print(f"{len(events):,} events written into PostgreSQL in {elapsed:.1f} s ({len(events) / elapsed:,.0f}/s), "
              f"batches of up to {args.batch:,} events, "
              + ("one transaction per batch" if args.one_per_batch else
                 f"transactions of up to {args.transaction_rows:,} runs sized to {args.transaction_seconds:g} s")
              + f"; load average {os.getloadavg()[0]:.2f} on "
              f"{os.cpu_count()} cores")
        for name, lat, errors in [(r.name, r.latencies, r.errors) for r in readers] + [
                ("writer's transactions", held, 0)]:
            lat = sorted(lat)
            if not lat:
                continue
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(f"  {name:<24} {len(lat):6,} times  median "
                  f"{statistics.median(lat) * 1000:7.1f} ms  p99 {p99 * 1000:7.1f} ms  max {lat[-1] * 1000:7.1f} ms  "
                  f"errors {errors}")
    finally:
        if preparer is not None:
            preparer.close()
        engine.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
