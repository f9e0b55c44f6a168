"""taskmon's writer alone: the generator's events, decoded, through ``Writer.write`` (no Redis).

Separates the writer's cost (event -> row conversion, per-batch merge, SQL) from the reader's,
to see where the time goes and to compare performance changes:

    python bench/ingest/writer_only.py --events 200000                  # SQLite in a temp dir
    python bench/ingest/writer_only.py --db postgresql+psycopg://postgres@127.0.0.1:5432/test
    python bench/ingest/writer_only.py --profile                         # cProfile, top functions

With --db PostgreSQL it creates and drops a database of its own on that server.
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import generator  # noqa: E402
from consumers import descendants  # noqa: E402
from cpu import CpuMeter, backend_pids  # noqa: E402

from monitor.ingest.buffer import Batch, EventBuffer, Taken  # noqa: E402
from monitor.ingest.prepare import Preparer  # noqa: E402
from monitor.sources import decode_kombu_message  # noqa: E402
from monitor.ingest.writer import TRANSACTION_SECONDS, TransactionSize, Writer  # noqa: E402
from storage.db import make_engine, upgrade  # noqa: E402
from storage.runs import row_plan  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=5000, help="events per Writer.write (the daemon's --batch-size)")
    parser.add_argument("--prepare-processes", type=int, default=1,
                        help="helper processes preparing rows (the daemon's --prepare-processes; 0: in the writer)")
    parser.add_argument("--transaction-seconds", type=float, default=TRANSACTION_SECONDS,
                        help="how long one writer transaction should last (default: %(default)s)")
    parser.add_argument("--one-per-batch", action="store_true",
                        help="one transaction per batch, as the writer did before transactions were sized")
    parser.add_argument("--db", help="PostgreSQL server URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--profile", action="store_true",
                        help="print the top functions by own time (runs prepare and commit in one thread)")
    parser.add_argument("--sql", action="append", default=[],
                        help="a statement to run after the migrations, before writing (repeatable): to measure "
                             "what an index or a trigger costs, e.g. --sql 'DROP INDEX ix_task_runs_search_trgm'")
    args = parser.parse_args(argv)

    plan = generator.build_plan(args.events, 30_000, seed=7)
    payloads = [cmd.rsplit(b"\r\n", 2)[-2] for cmd in plan.commands]  # the PUBLISH payloads
    del plan
    started = time.perf_counter()
    events = [event for payload in payloads for event in decode_kombu_message(payload)]
    decode = time.perf_counter() - started
    del payloads
    gc.collect()
    gc.freeze()  # the test data is not what the writer should pay to collect

    tmp = Path(tempfile.mkdtemp(prefix="taskmon-writer-"))
    dbname = None
    if args.db:
        from sqlalchemy.engine import make_url

        admin = make_url(args.db).set(drivername="postgresql").render_as_string(hide_password=False)
        dbname = f"taskmon_writer_{os.getpid()}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        url = make_url(args.db).set(database=dbname).render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp / 'writer.db'}"
    engine = make_engine(url)
    preparer = None
    try:
        upgrade(engine)
        if args.sql:
            from sqlalchemy import text

            with engine.begin() as conn:
                for statement in args.sql:
                    conn.execute(text(statement))
        buffer = EventBuffer(10**8)
        preparer = Preparer(row_plan(engine.dialect), 16384,
                            processes=0 if args.profile else args.prepare_processes)
        size = (TransactionSize(1e9, 10**9, start=10**9) if args.one_per_batch
                else TransactionSize(args.transaction_seconds))
        writer = Writer(engine, buffer, field_max_bytes=16384, batch_size=args.batch, preparer=preparer,
                        transaction=size)
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            # cProfile sees one thread: write() prepares and commits in this one.
            batches = [events[i:i + args.batch] for i in range(0, len(events), args.batch)]
            started = time.perf_counter()
            profiler.enable()
            for batch in batches:
                writer.write(Taken(batches=[Batch("bench", batch)]))
            profiler.disable()
        else:
            # The daemon's way: the writer thread takes from the buffer, its SQL thread commits.
            for i in range(0, len(events), 1000):
                buffer.put(Batch.encode("bench", events[i:i + 1000]))  # as the sources put them
            own, server = CpuMeter(), CpuMeter()
            watch = psycopg.connect(admin.rsplit("/", 1)[0] + f"/{dbname}", autocommit=True) if dbname else None
            with engine.connect():  # the writer's connection, so its backend is there to sample
                pass
            own.start([os.getpid(), *descendants(os.getpid())])
            server.start(backend_pids(watch, dbname) if watch else [])
            started = time.perf_counter()
            writer.start()
            while writer.counters.get("events_written") < len(events) and writer.is_alive():
                time.sleep(0.01)
                if watch and int(time.perf_counter() * 100) % 50 == 0:
                    server.sample(backend_pids(watch, dbname))
            writer.stop(time.monotonic() + 10)
            writer.join()
            own.sample([os.getpid(), *descendants(os.getpid())])
            if watch:
                server.sample(backend_pids(watch, dbname))
                watch.close()
        elapsed = time.perf_counter() - started
        counts = writer.counters.snapshot()
        print(f"{len(events):,} events ({counts.get('rows_written', 0):,} rows) into {engine.dialect.name} in "
              f"{elapsed:.2f} s: writer {len(events) / elapsed:,.0f} events/s "
              f"({elapsed / len(events) * 1e6:.1f} us/event); decode alone {len(events) / decode:,.0f} events/s"
              + (" [under cProfile]" if profiler else ""))
        if not profiler:
            per = 1e6 / len(events)
            print(f"CPU per 1M events: writer process + helper {own.seconds() * per:.1f} s"
                  + (f", PostgreSQL backends {server.seconds() * per:.1f} s, total "
                     f"{(own.seconds() + server.seconds()) * per:.1f} s" if dbname else ""))
        if dbname and not profiler:
            search_index_cost(engine, admin.rsplit("/", 1)[0] + f"/{dbname}", dbname, len(events))
        malformed = {k: v for k, v in counts.items() if k.startswith("malformed")}
        if malformed:
            print(f"malformed: {malformed}")
        if profiler:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    finally:
        if preparer is not None:
            preparer.close()
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
        if dbname:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
    return 0


def search_index_cost(engine, url: str, dbname: str, events: int) -> None:
    """What `taskmon serve`'s search indexer then spends catching up with the runs written (PostgreSQL)."""
    from datetime import datetime, timedelta, timezone

    from storage import pg_search_index

    later = datetime.now(timezone.utc) + timedelta(minutes=1)
    with psycopg.connect(url, autocommit=True) as watch, engine.connect() as conn:
        own, server = CpuMeter(), CpuMeter()
        own.start([os.getpid()])
        server.start(backend_pids(watch, dbname))
        started, runs = time.perf_counter(), 0
        while n := pg_search_index.index_batch(conn, now=later):
            conn.commit()
            runs += n
        elapsed = time.perf_counter() - started
        own.sample([os.getpid()])
        server.sample(backend_pids(watch, dbname))
    per = 1e6 / events
    print(f"search index (taskmon serve's indexer) caught up with {runs:,} runs in {elapsed:.2f} s: CPU per 1M "
          f"events written: indexer {own.seconds() * per:.1f} s, PostgreSQL backends {server.seconds() * per:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
