"""bench/query: query times of `history`, `show` and `stats` on a large history, SQLite and PostgreSQL.

Fills each database with N task runs (default 1,000,000: a realistic mix of task names, states,
workers and queues over the last 30 days, with workflows of parents and children), then times the
storage queries behind the commands. Query time only (no process start, no printing): the median of
several repetitions after one warm-up run, on a connection already open.

    python bench/query.py                      # both databases, 1,000,000 runs
    python bench/query.py --rows 100000 --db sqlite

PostgreSQL: a database of the bench's own is created next to --pg-url's and dropped at the end.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from storage.db import make_engine, upgrade  # noqa: E402
from storage.history import RunFilter, list_runs, run_detail  # noqa: E402
from storage.schema import task_runs  # noqa: E402
from storage.rollup_stats import rollup_task_stats  # noqa: E402
from storage.rollups import LEVELS, backfill_sql, drop_trigger_ddl, totals_backfill_sql, trigger_ddl  # noqa: E402
from storage.stats import task_stats  # noqa: E402

# (name, share of runs, median runtime in seconds, queue)
TASKS = [
    ("tasks.notifications.send_notification_email", 0.30, 0.4, "email"),
    ("tasks.finance.check_pending_bills", 0.15, 0.8, "finance"),
    ("tasks.data.process_event", 0.20, 0.05, "default"),
    ("tasks.finance.send_bill_reminders", 0.08, 1.5, "finance"),
    ("tasks.maintenance.cleanup_cache", 0.06, 2.0, "default"),
    ("tasks.data.export_data", 0.05, 30.0, "default"),
    ("tasks.reports.generate_hourly_report", 0.05, 12.0, "reports"),
    ("tasks.reports.generate_daily_report", 0.04, 60.0, "reports"),
    ("tasks.notifications.cleanup_old_notifications", 0.03, 5.0, "default"),
    ("tasks.finance.calculate_monthly_revenue", 0.02, 45.0, "finance"),
    ("tasks.maintenance.backup_database", 0.015, 300.0, "default"),
    ("tasks.reports.generate_weekly_report", 0.004, 120.0, "reports"),
    ("tasks.reports.generate_monthly_report", 0.001, 600.0, "reports"),
]
WORKERS = [f"celery@worker-{i}" for i in range(1, 9)]
EXCEPTIONS = [("ConnectionError", "ConnectionError('SMTP server went away')"),
              ("TimeoutError", "TimeoutError('upstream timed out after 30s')"),
              ("ValueError", "ValueError('invalid account id')"),
              ("SoftTimeLimitExceeded", "SoftTimeLimitExceeded()")]
TRACEBACK = "Traceback (most recent call last):\n" + "".join(
    f'  File "/app/tasks/module_{i}.py", line {10 * i}, in step_{i}\n    result = step_{i + 1}(payload)\n' for i in range(8))
COLUMNS = [c.name for c in task_runs.columns]
DAYS = 30
REPEAT = 7


def generate(n: int, now: datetime, seed: int = 5):
    """Yield n rows (dicts of every column), oldest first, like the daemon would have written them."""
    rng = random.Random(seed)
    names = [t[0] for t in TASKS]
    weights = [t[1] for t in TASKS]
    meta = {t[0]: t for t in TASKS}
    start = now - timedelta(days=DAYS)
    step = DAYS * 86400 / n
    recent: list[tuple[str, str]] = []  # (task_id, root_id) of recent runs, to hang children on
    for i in range(n):
        name = rng.choices(names, weights)[0]
        _, _, median, queue = meta[name]
        seen = start + timedelta(seconds=i * step + rng.random() * step)
        age = (now - seen).total_seconds()
        roll = rng.random()
        if age < 120 and roll < 0.5:
            state = rng.choice(("PENDING", "RECEIVED", "STARTED"))
        elif roll < 0.0005:
            state = "STARTED"  # lost: never finished
        elif roll < 0.04:
            state = "FAILURE"
        elif roll < 0.05:
            state = "RETRY"
        elif roll < 0.055:
            state = "REVOKED"
        else:
            state = "SUCCESS"
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        parent_id = root_id = None
        if recent and rng.random() < 0.15:
            parent_id, root_id = rng.choice(recent)
        root_id = root_id or task_id
        recent.append((task_id, root_id))
        if len(recent) > 50:
            recent.pop(0)
        wait = rng.expovariate(1 / 0.3) if rng.random() > 0.02 else rng.uniform(10, 600)
        runtime = median * rng.lognormvariate(0, 0.6)
        received = seen + timedelta(seconds=wait * 0.2)
        started = seen + timedelta(seconds=wait) if state not in ("PENDING", "RECEIVED", "REVOKED") else None
        finished = started + timedelta(seconds=runtime) if started and state in ("SUCCESS", "FAILURE", "RETRY") else None
        failed = state in ("FAILURE", "RETRY")
        exc_type, exc = rng.choice(EXCEPTIONS) if failed else (None, None)
        yield {
            "task_id": task_id, "name": name, "state": state, "state_at": finished or started or seen,
            "args": f"({rng.randrange(100000)},)", "kwargs": "{}",
            "result": "'ok'" if state == "SUCCESS" else None,
            "exception": exc, "exception_type": exc_type, "traceback": TRACEBACK + exc if state == "FAILURE" else None,
            "queue": queue, "routing_key": queue, "exchange": "", "worker": rng.choice(WORKERS) if started else None,
            "root_id": root_id, "parent_id": parent_id, "retries": rng.randint(1, 3) if state == "RETRY" else 0,
            "eta": None, "expires": None, "seen_at": seen, "sent_at": seen, "received_at": received if state != "PENDING" else None,
            "started_at": started, "finished_at": finished, "runtime": round(runtime, 4) if finished else None,
            "queue_wait": round(wait, 3) if started else None, "truncated": False, "updated_at": finished or started or seen,
            "received_attempt": None, "received_first_at": None, "redelivered": False, "stuck_at": None, "replay_of": None,
        }


def _sqlite_value(v):
    if isinstance(v, datetime):
        return v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
    return v


def fill_sqlite(path: Path, rows, n: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")  # bulk load only; taskmon itself runs with NORMAL
    sql = f"INSERT INTO task_runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    chunk = []
    for i, row in enumerate(rows, 1):
        chunk.append(tuple(_sqlite_value(row[c]) for c in COLUMNS))
        if len(chunk) == 50_000 or i == n:
            conn.executemany(sql, chunk)
            conn.commit()
            chunk.clear()
            progress("sqlite", i, n)
    conn.close()


def fill_postgres(url, rows, n: int) -> None:
    import psycopg

    with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY task_runs ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for i, row in enumerate(rows, 1):
                copy.write_row([row[c] for c in COLUMNS])
                if i % 50_000 == 0 or i == n:
                    progress("postgresql", i, n)
        conn.execute("ANALYZE task_runs")  # what autovacuum does after a load this size


def load(engine, fill) -> None:
    """Bulk-load with the rollup triggers off, then fill the rollups in one grouped statement each
    (as migration 0010 does for an existing history) and put the triggers back."""
    dialect = engine.dialect.name
    with engine.begin() as conn:
        for ddl in drop_trigger_ddl(dialect):
            conn.exec_driver_sql(ddl)
    fill()
    t0 = time.perf_counter()
    with engine.begin() as conn:
        for level in LEVELS:
            conn.exec_driver_sql(backfill_sql(dialect, level))
        conn.exec_driver_sql(totals_backfill_sql())
        for ddl in trigger_ddl(dialect):
            conn.exec_driver_sql(ddl)
        rollups = conn.exec_driver_sql("SELECT count(*) FROM run_rollups").scalar()
        hourly = conn.exec_driver_sql("SELECT count(*) FROM run_rollups_hourly").scalar()
    print(f"  {dialect}: rollups built in {time.perf_counter() - t0:.0f}s, {rollups:,} minute and {hourly:,} hourly rows",
          file=sys.stderr)


def progress(db: str, done: int, total: int) -> None:
    print(f"\r  {db}: {done:,}/{total:,} runs", end="" if done < total else "\n", file=sys.stderr, flush=True)


def timed(fn, repeat: int = REPEAT) -> float:
    """Median milliseconds of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def measure(engine, now: datetime, show_id: str) -> list[tuple[str, float]]:
    since_24h = now - timedelta(hours=24)
    since_30d = now - timedelta(days=30)
    cases = [
        ("history --limit 10", lambda c: list_runs(c, RunFilter(), 10)),
        ("history --limit 10 --name tasks.data.export_data", lambda c: list_runs(c, RunFilter(name="tasks.data.export_data"), 10)),
        ("history --limit 10 --name 'tasks.reports.*'", lambda c: list_runs(c, RunFilter(name="tasks.reports.*"), 10)),
        ("history --limit 10 --name tasks.reports.generate_monthly_report",
         lambda c: list_runs(c, RunFilter(name="tasks.reports.generate_monthly_report"), 10)),
        ("history --limit 10 --state FAILURE", lambda c: list_runs(c, RunFilter(states=("FAILURE",)), 10)),
        ("history --limit 10 --state RETRY --state REVOKED", lambda c: list_runs(c, RunFilter(states=("RETRY", "REVOKED")), 10)),
        ("history --limit 10 --worker celery@worker-3 --since 7d",
         lambda c: list_runs(c, RunFilter(worker="celery@worker-3", since=now - timedelta(days=7)), 10)),
        ("show TASK_ID", lambda c: run_detail(c, show_id)),
        ("stats --since 24h --exact (task_runs alone)", lambda c: task_stats(c, RunFilter(since=since_24h), now)),
        ("stats --since 24h (rollups + edges)", lambda c: rollup_task_stats(c, RunFilter(since=since_24h), now)),
        ("stats --since 30d --exact (task_runs alone)", lambda c: task_stats(c, RunFilter(since=since_30d), now)),
        ("stats --since 30d (rollups + edges)", lambda c: rollup_task_stats(c, RunFilter(since=since_30d), now)),
    ]
    out = []
    with engine.connect() as conn:
        for label, fn in cases:
            out.append((label, timed(lambda: fn(conn))))
    return out


def pick_show_id(engine) -> str:
    """A run in the middle of a workflow: it has a parent and children."""
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT p.task_id FROM task_runs p JOIN task_runs c ON c.parent_id = p.task_id "
            "WHERE p.parent_id IS NOT NULL LIMIT 1")).scalar()


def bench_sqlite(n: int, now: datetime) -> list[tuple[str, float]]:
    with tempfile.TemporaryDirectory(prefix="taskmon-bench-") as tmp:
        path = Path(tmp) / "bench.db"
        engine = make_engine(f"sqlite:///{path}")
        upgrade(engine)
        t0 = time.perf_counter()
        load(engine, lambda: fill_sqlite(path, generate(n, now), n))
        engine.dispose()
        print(f"  sqlite: loaded in {time.perf_counter() - t0:.0f}s, {path.stat().st_size / 2**20:.0f} MiB", file=sys.stderr)
        engine = make_engine(f"sqlite:///{path}")
        try:
            return measure(engine, now, pick_show_id(engine))
        finally:
            engine.dispose()


def bench_postgres(admin_url: str, n: int, now: datetime) -> list[tuple[str, float]]:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"taskmon_bench_{os.getpid()}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name)
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        upgrade(engine)
        t0 = time.perf_counter()
        load(engine, lambda: fill_postgres(url, generate(n, now), n))
        with engine.begin() as conn:
            for table in ("run_rollups", "run_rollups_hourly", "run_totals"):
                conn.exec_driver_sql(f"ANALYZE {table}")
        print(f"  postgresql: loaded in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        return measure(engine, now, pick_show_id(engine))
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def versions(pg_url: str | None) -> str:
    parts = [f"python {platform.python_version()}", f"sqlite {sqlite3.sqlite_version}"]
    if pg_url:
        engine = create_engine(pg_url)
        with engine.connect() as conn:
            parts.append("postgresql " + conn.execute(text("SHOW server_version")).scalar().split()[0])
        engine.dispose()
    return ", ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--pg-url", default=os.environ.get("TASKMON_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                    help="an existing PostgreSQL database; the bench creates and drops its own beside it")
    args = ap.parse_args()
    now = datetime.now(timezone.utc)
    results: dict[str, list[tuple[str, float]]] = {}
    if args.db in ("sqlite", "both"):
        results["SQLite"] = bench_sqlite(args.rows, now)
    if args.db in ("postgresql", "both"):
        results["PostgreSQL"] = bench_postgres(args.pg_url, args.rows, now)
    labels = [label for label, _ in next(iter(results.values()))]
    width = max(len(label) for label in labels)
    dbs = list(results)
    print(f"{args.rows:,} task runs over {DAYS} days; median of {REPEAT} runs, milliseconds of query time")
    print(f"{os.cpu_count()} CPUs, {versions(args.pg_url if 'PostgreSQL' in results else None)}")
    print(f"{'query':<{width}}  " + "  ".join(f"{db:>10}" for db in dbs))
    for i, label in enumerate(labels):
        print(f"{label:<{width}}  " + "  ".join(f"{results[db][i][1]:>10.1f}" for db in dbs))


if __name__ == "__main__":
    main()
