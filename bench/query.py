"""bench/query: query times of `history`, `show` and `stats` on a large history, SQLite and PostgreSQL.

Fills each database with N task runs (default 10,000,000: a realistic mix of task names, states,
workers and queues over the last 60 days, with workflows of parents and children), then times the
storage queries behind the commands: `stats` and `report` from the rollups side by side with the
same figures from task_runs alone (`--exact`). Query time only (no process start, no printing):
the median of several repetitions after one warm-up run, on a connection already open.

    python bench/query.py                      # both databases, 10,000,000 runs
    python bench/query.py --rows 100000 --db sqlite

The load goes in bulk, with the rollup triggers and task_runs' secondary indexes dropped (SQLite:
executemany in large transactions; PostgreSQL: COPY); then the indexes are made again and the
rollups built by storage.rollups.rebuild, the grouped INSERT ... SELECT a repair would use, and a
sample of hours and minutes is checked against the GROUP BY over task_runs. PostgreSQL's search
index (run_search, kept by `taskmon serve`) is not filled: only `history --search` reads it, which
this bench does not time.

PostgreSQL: a database of the bench's own is created next to --pg-url's and dropped at the end.
--sqlite-path / --pg-database with --keep keep the loaded data, and a later run given the same
names measures it again without loading; --no-exact leaves out the `--exact` queries, which take
minutes on 10M rows.
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
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from bench.query_data import fill_sql  # noqa: E402
from storage.db import make_engine, upgrade  # noqa: E402
from storage.history import RunFilter, list_runs, run_detail  # noqa: E402
from storage.schema import task_runs  # noqa: E402
from storage.rollup_stats import rollup_task_stats  # noqa: E402
from storage.rollups import KEY, LEVELS, MEASURES, drop_trigger_ddl, grouped_sql, rebuild, trigger_ddl  # noqa: E402
from storage.sql import bind  # noqa: E402
from storage.stats import task_stats  # noqa: E402
from tasks.periods import report_period  # noqa: E402
from tasks.report_data import report_data  # noqa: E402

COLUMNS = [c.name for c in task_runs.columns]
DAYS = 60
REPEAT = 7


CHUNK = 500_000  # runs a statement: progress, and a transaction that does not hold the whole load


def fill_sqlite(path: Path, n: int, now: datetime, days: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")  # bulk load only; taskmon itself runs with NORMAL
    conn.execute("PRAGMA cache_size=-1000000")  # 1 GB: the primary key's B-tree takes random task ids
    for lo in range(0, n, CHUNK):
        conn.execute(fill_sql("sqlite", n, now, days, lo, min(lo + CHUNK, n)))
        conn.commit()
        progress("sqlite", min(lo + CHUNK, n), n)
    conn.close()


def fill_postgres(url, n: int, now: datetime, days: int) -> None:
    import psycopg

    with psycopg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False)) as conn:
        for lo in range(0, n, CHUNK):
            conn.execute(fill_sql("postgresql", n, now, days, lo, min(lo + CHUNK, n)))  # no parameters: '%' is modulo
            conn.commit()
            progress("postgresql", min(lo + CHUNK, n), n)


def load(engine, fill) -> None:
    """Bulk-load with the rollup triggers and the secondary indexes off, make the indexes again,
    build the rollups (storage.rollups.rebuild), check a sample and put the triggers back."""
    from sqlalchemy.schema import CreateIndex, DropIndex

    dialect = engine.dialect.name
    with engine.begin() as conn:
        for ddl in drop_trigger_ddl(dialect):
            conn.exec_driver_sql(ddl)
        for index in task_runs.indexes:
            conn.execute(DropIndex(index, if_exists=True))
    t0 = time.perf_counter()
    fill()
    print(f"  {dialect}: task_runs loaded in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        if dialect == "sqlite":
            conn.exec_driver_sql("PRAGMA cache_size=-1000000")
        else:
            conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '512MB'")
        for index in task_runs.indexes:
            conn.execute(CreateIndex(index))
    print(f"  {dialect}: indexes made in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        if dialect == "postgresql":
            conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
        counts = rebuild(conn, totals=True)
        for ddl in trigger_ddl(dialect):
            conn.exec_driver_sql(ddl)
    print(f"  {dialect}: rollups built in {time.perf_counter() - t0:.0f}s: "
          + ", ".join(f"{n:,} rows in {t}" for t, n in counts.items()), file=sys.stderr)
    if dialect == "postgresql":
        with engine.begin() as conn:
            for table in ("task_runs", "run_rollups", "run_rollups_hourly", "run_totals", "worker_rollups_hourly",
                          "exception_rollups_hourly"):
                conn.exec_driver_sql(f"ANALYZE {table}")  # what autovacuum does after a load this size


def check_sample(engine, now: datetime, days: int, samples: int = 6, seed: int = 7) -> str:
    """Compare random hours of run_rollups_hourly and minutes of run_rollups with the GROUP BY over
    task_runs; raise if any row differs. Returns what was compared."""
    rng = random.Random(seed)
    dialect = engine.dialect.name
    compared = 0
    with engine.connect() as conn:
        total = conn.exec_driver_sql("SELECT count(*) FROM task_runs").scalar_one()
        rolled = conn.exec_driver_sql("SELECT coalesce(sum(runs), 0) FROM run_rollups_hourly").scalar_one()
        if int(rolled) != total:
            raise SystemExit(f"run_rollups_hourly counts {rolled:,} runs, task_runs holds {total:,}")
        for level, width in (("hour", timedelta(hours=1)), ("minute", timedelta(minutes=1))):
            table, time_col = LEVELS[level]
            for _ in range(samples):
                at = now - timedelta(seconds=rng.uniform(3600, days * 86400 - 3600))
                a = at.replace(minute=0 if level == "hour" else at.minute, second=0, microsecond=0)
                params = {"a": bind(dialect, a), "b": bind(dialect, a + width)}
                exact = conn.execute(text(grouped_sql(dialect, "t.seen_at >= :a AND t.seen_at < :b", level))
                                     .bindparams(**params)).all()
                cols = ", ".join((time_col,) + KEY[1:] + MEASURES)
                stored = conn.execute(text(f"SELECT {cols} FROM {table} WHERE {time_col} >= :a AND {time_col} < :b")
                                      .bindparams(**params)).all()
                key = lambda r: tuple(str(v) for v in r[1:len(KEY)])  # noqa: E731
                want = {key(r): [round(float(v), 6) for v in r[len(KEY):]] for r in exact}
                got = {key(r): [round(float(v), 6) for v in r[len(KEY):]] for r in stored if r[len(KEY)]}
                if want != got:
                    raise SystemExit(f"{table} at {a.isoformat()} differs from the GROUP BY over task_runs")
                compared += 1
    return f"{compared} sampled hours and minutes equal the GROUP BY; {total:,} runs in both"


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


def measure(engine, now: datetime, show_id: str, repeat: int, exact: bool = True) -> list[tuple[str, float]]:
    since_24h = now - timedelta(hours=24)
    since_30d = now - timedelta(days=30)
    month = report_period("monthly", ZoneInfo("UTC"), now=now)  # the last complete month
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
        (f"report monthly {month.label} --exact (task_runs alone)",
         lambda c: report_data(c, month.start, month.end, exact=True)),
        (f"report monthly {month.label} (rollups)", lambda c: report_data(c, month.start, month.end)),
    ]
    if not exact:  # the --exact figures take minutes on 10M rows; their last measure stands
        cases = [(label, fn) for label, fn in cases if "--exact" not in label]
    out = []
    with engine.connect() as conn:
        for label, fn in cases:
            out.append((label, timed(lambda: fn(conn), repeat)))
    return out


def pick_show_id(engine) -> str:
    """A run in the middle of a workflow: it has a parent and children."""
    with engine.connect() as conn:
        return conn.execute(text(
            "SELECT p.task_id FROM task_runs p JOIN task_runs c ON c.parent_id = p.task_id "
            "WHERE p.parent_id IS NOT NULL LIMIT 1")).scalar()


def data_end(engine) -> datetime | None:
    """The last seen_at of a database already loaded, or None when task_runs is empty."""
    with engine.connect() as conn:
        last = conn.exec_driver_sql("SELECT max(seen_at) FROM task_runs").scalar()
    if isinstance(last, str):
        last = datetime.fromisoformat(last)
    return None if last is None else (last if last.tzinfo else last.replace(tzinfo=timezone.utc))


def run(engine, fill, n: int, now: datetime, days: int, repeat: int, exact: bool = True) -> tuple[datetime, list[tuple[str, float]]]:
    """Load (unless the database holds runs already: then its last run is `now`), check, measure."""
    dialect = engine.dialect.name
    last = data_end(engine)
    if last is None:
        t0 = time.perf_counter()
        load(engine, fill)
        print(f"  {dialect}: ready in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    else:
        now = last + timedelta(seconds=17.25)  # the window ends a few seconds after the last run, mid-minute
        print(f"  {dialect}: reusing the runs already loaded, up to {last.isoformat()}", file=sys.stderr)
    print(f"  {dialect}: {check_sample(engine, now, days)}", file=sys.stderr)
    return now, measure(engine, now, pick_show_id(engine), repeat, exact)


def bench_sqlite(n: int, now: datetime, days: int, path: Path | None, keep: bool, repeat: int, exact: bool = True):
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="taskmon-bench-")
        path = Path(tmp.name) / "bench.db"
    try:
        engine = make_engine(f"sqlite:///{path}")
        upgrade(engine)
        try:
            return run(engine, lambda: fill_sqlite(path, n, now, days), n, now, days, repeat, exact)
        finally:
            print(f"  sqlite: {path.stat().st_size / 2**20:,.0f} MiB", file=sys.stderr)
            engine.dispose()
    finally:
        if not keep:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        if tmp is not None:
            tmp.cleanup()


def bench_postgres(admin_url: str, n: int, now: datetime, days: int, name: str | None, keep: bool,
                   repeat: int, exact: bool = True):
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = name or f"taskmon_bench_{os.getpid()}"
    with admin.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name)
    engine = make_engine(url.render_as_string(hide_password=False))
    try:
        upgrade(engine)
        return run(engine, lambda: fill_postgres(url, n, now, days), n, now, days, repeat, exact)
    finally:
        engine.dispose()
        if not keep:
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
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=DAYS, help="the runs are spread over this many days up to now")
    ap.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument("--pg-url", default=os.environ.get("TASKMON_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                    help="an existing PostgreSQL database; the bench creates and drops its own beside it")
    ap.add_argument("--sqlite-path", type=Path, help="the SQLite file (default: a temporary one)")
    ap.add_argument("--pg-database", help="the PostgreSQL database's name (default: taskmon_bench_<pid>)")
    ap.add_argument("--repeat", type=int, default=REPEAT, help="timed runs of each query (after one warm-up)")
    ap.add_argument("--keep", action="store_true", help="keep the SQLite file and PostgreSQL database")
    ap.add_argument("--no-exact", action="store_true", help="leave out the --exact queries (task_runs alone)")
    args = ap.parse_args()
    now = datetime.now(timezone.utc)
    results: dict[str, list[tuple[str, float]]] = {}
    ends = {}
    if args.db in ("sqlite", "both"):
        ends["SQLite"], results["SQLite"] = bench_sqlite(args.rows, now, args.days, args.sqlite_path, args.keep,
                                                            args.repeat, not args.no_exact)
    if args.db in ("postgresql", "both"):
        ends["PostgreSQL"], results["PostgreSQL"] = bench_postgres(args.pg_url, args.rows, now, args.days,
                                                                   args.pg_database, args.keep, args.repeat,
                                                                   not args.no_exact)
    labels = [label for label, _ in next(iter(results.values()))]
    width = max(len(label) for label in labels)
    dbs = list(results)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{args.rows:,} task runs over {args.days} days; median of {args.repeat} runs, milliseconds of query time")
    print(f"{os.cpu_count()} CPUs, load average {load}, {versions(args.pg_url if 'PostgreSQL' in results else None)}")
    print("window end: " + ", ".join(f"{db} {end.isoformat(timespec='seconds')}" for db, end in ends.items()))
    print(f"{'query':<{width}}  " + "  ".join(f"{db:>10}" for db in dbs))
    for i, label in enumerate(labels):
        print(f"{label:<{width}}  " + "  ".join(f"{results[db][i][1]:>10.1f}" for db in dbs))


if __name__ == "__main__":
    main()
