"""How long does a cleanup of 1M task runs make the daemon's writer wait?

For each database: fill ``--rows`` task runs older than the retention, start a writer process
that upserts one new run per transaction (as the ingestion daemon does) and records how long
each write takes, run ``cleanup_task_history`` (chunked, one transaction per chunk), and print the
longest writer stall during the cleanup next to the same writer's longest write before it.

    python bench/cleanup_lock.py                                  # SQLite and PostgreSQL, 1M rows
    python bench/cleanup_lock.py --rows 200000 --chunk-size 2000 --no-postgres

PostgreSQL: ``--postgres URL`` (default TASKMON_TEST_POSTGRES_URL or the tests' default); the
bench works in a schema of its own and drops it afterwards.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, func, select, text  # noqa: E402

from storage.db import make_engine, upgrade  # noqa: E402
from storage.runs import upsert_runs  # noqa: E402
from storage.schema import task_runs  # noqa: E402
from tasks.cleanup import cleanup_task_history  # noqa: E402

DEFAULT_PG = os.environ.get("TASKMON_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


COLUMNS = ("task_id, name, state, state_at, seen_at, started_at, finished_at, runtime, queue, worker, args, kwargs, "
           "result, retries, truncated, updated_at")
FILL_SQL = {
    # Generated in the database: a million rows in seconds, not minutes of executemany.
    "sqlite": f"""
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < :rows)
        INSERT INTO task_runs ({COLUMNS})
        SELECT printf('old-%08d', i), 'app.tasks.job_' || (i % 20), 'SUCCESS', ts, ts, ts, ts, 0.05, 'default',
               'celery@w' || (i % 4), '(1, 2)', '{{}}', '3', 0, 0, ts
        FROM (SELECT i, datetime(:start, '+' || (i * 2) || ' seconds') AS ts FROM n)""",
    "postgresql": f"""
        INSERT INTO task_runs ({COLUMNS})
        SELECT 'old-' || lpad(i::text, 8, '0'), 'app.tasks.job_' || (i % 20), 'SUCCESS', ts, ts, ts, ts, 0.05,
               'default', 'celery@w' || (i % 4), '(1, 2)', '{{}}', '3', 0, false, ts
        FROM (SELECT i, CAST(:start AS timestamptz) + i * interval '2 seconds' AS ts
              FROM generate_series(0, :rows - 1) AS i) s""",
}


def fill(engine, rows: int, now: datetime) -> None:
    """``rows`` finished task runs, two seconds apart, all older than 30 days (at most 1.2M fit)."""
    start = now - timedelta(days=60)
    if rows * 2 > 29 * 86400:
        raise SystemExit("--rows: at most 1,252,800 rows fit between 60 and 31 days ago at 2 s apart")
    stamp = start.strftime("%Y-%m-%d %H:%M:%S") if engine.dialect.name == "sqlite" else start.isoformat()
    with engine.begin() as conn:
        conn.execute(text(FILL_SQL[engine.dialect.name]), {"rows": rows, "start": stamp})
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE task_runs"))


def writer(url: str, stop, started, out, pause: float) -> None:
    """Upsert one new run per transaction until told to stop; send back (start time, seconds) per write."""
    engine = make_engine(url)
    samples = []
    n = 0
    started.set()
    while not stop.is_set():
        now = datetime.now(timezone.utc)
        row = {"task_id": f"new-{os.getpid()}-{n}", "name": "app.tasks.live", "state": "SUCCESS", "state_at": now,
               "seen_at": now, "updated_at": now}
        t0 = time.perf_counter()
        with engine.begin() as conn:
            upsert_runs(conn, [row])
        t1 = time.perf_counter()  # CLOCK_MONOTONIC: comparable with the parent's perf_counter()
        samples.append((t1, t1 - t0))
        n += 1
        time.sleep(pause)
    engine.dispose()
    out.put(samples)


def measure(url: str, rows: int, chunk_size: int, pause: float, baseline_seconds: float) -> dict:
    engine = make_engine(url)
    upgrade(engine)
    now = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    fill(engine, rows, now)
    fill_seconds = time.perf_counter() - t0

    ctx = mp.get_context("spawn")
    stop, started, out = ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=writer, args=(url, stop, started, out, pause))
    proc.start()
    started.wait(60)
    time.sleep(baseline_seconds)  # the writer alone, for comparison
    chunks = []
    c0 = time.perf_counter()
    deletions = cleanup_task_history(engine, now=now, days=30, max_records=0, chunk_size=chunk_size,
                                     on_chunk=lambda table, n, total: chunks.append(n))
    c1 = time.perf_counter()
    time.sleep(0.5)
    stop.set()
    samples = out.get(timeout=60)
    proc.join(30)
    with engine.connect() as conn:
        left_old = conn.execute(select(func.count()).where(task_runs.c.task_id.like("old-%"))).scalar_one()
    engine.dispose()

    # A sample is (when the write ended, how long it took); "during" = overlapping the cleanup.
    before = [took for end, took in samples if end < c0]
    during = [took for end, took in samples if end >= c0 and end - took <= c1]
    return {
        "rows": rows, "fill_s": fill_seconds, "deleted": deletions[0].count, "left_old": left_old,
        "chunk_size": chunk_size, "chunks": len(chunks), "cleanup_s": c1 - c0,
        "writes_during": len(during), "max_stall_ms": max(during) * 1000 if during else float("nan"),
        "p99_ms": statistics.quantiles(during, n=100)[98] * 1000 if len(during) >= 100 else float("nan"),
        "baseline_max_ms": max(before) * 1000 if before else float("nan"),
    }


def report(name: str, r: dict) -> None:
    print(f"{name:<10}  deleted {r['deleted']:,} of {r['rows']:,} rows in {r['cleanup_s']:.1f} s "
          f"({r['chunks']} chunks of {r['chunk_size']:,}); writer: {r['writes_during']:,} writes during the cleanup, "
          f"longest stall {r['max_stall_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms "
          f"(longest before the cleanup {r['baseline_max_ms']:.0f} ms); fill took {r['fill_s']:.0f} s")
    if r["left_old"]:
        print(f"{name:<10}  ERROR: {r['left_old']:,} old rows left", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=5000, help="rows per transaction (cleanup_chunk_size)")
    parser.add_argument("--pause", type=float, default=0.005, help="seconds between the writer's writes")
    parser.add_argument("--baseline", type=float, default=3.0, help="seconds the writer runs alone first")
    parser.add_argument("--postgres", default=DEFAULT_PG)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()

    print(f"# {platform.node()}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {platform.system()} {platform.release()}")
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory(prefix="taskmon-bench-") as tmp:
            report("sqlite", measure(f"sqlite:///{tmp}/bench.db", args.rows, args.chunk_size, args.pause, args.baseline))
    if not args.no_postgres:
        schema = f"bench_cleanup_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            from sqlalchemy.engine import make_url

            url = make_url(args.postgres).update_query_dict({"options": f"-csearch_path={schema}"})
            report("postgresql", measure(url.render_as_string(hide_password=False), args.rows, args.chunk_size,
                                         args.pause, args.baseline))
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
