"""bench/startup: whole-process times of taskmon's read commands on a 1,000,000-run SQLite history.

What a person waits for at the prompt: interpreter start, imports, settings, opening the store,
the query and the printing, each command run as its own process through the `taskmon` console
script, the way a shell runs it. bench/query.py times the queries alone on an open connection.

    python bench/startup.py                    # 20 runs of each command
    python bench/startup.py --runs 50 --rows 100000

The history file is built once (bench/query.py's generator: 13 task names, workflows, 30 days)
and reused while it is less than a day old; `--rebuild` builds it again.
"""
from __future__ import annotations

import argparse
import compileall
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.query import fill_sqlite, load, pick_show_id  # noqa: E402
from storage.db import make_engine, upgrade  # noqa: E402

REUSE_FOR = timedelta(hours=23)  # `stats --since 24h` should still find a day of runs
DAYS = 30  # the history's span: the dashboard's widest window


def built_at(path: Path, rows: int) -> datetime | None:
    """When the bench built ``path`` with ``rows`` runs; None if it did not (or with another count)."""
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT built_at, rows FROM bench_meta").fetchone()
    except sqlite3.DatabaseError:
        return None
    finally:
        conn.close()
    return datetime.fromisoformat(row[0]) if row and row[1] == rows else None


def build(path: Path, rows: int) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    t0 = time.perf_counter()
    load(engine, lambda: fill_sqlite(path, rows, now, DAYS))  # the query bench's bulk load, rollups rebuilt
    engine.dispose()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE bench_meta (built_at TEXT NOT NULL, rows INTEGER NOT NULL)")
    conn.execute("INSERT INTO bench_meta VALUES (?, ?)", (now.isoformat(), rows))
    conn.commit()
    conn.close()
    print(f"built {path} in {time.perf_counter() - t0:.0f}s, {path.stat().st_size / 2**20:.0f} MiB", file=sys.stderr)


def history_file(path: Path, rows: int, rebuild: bool) -> Path:
    at = None if rebuild else built_at(path, rows)
    if at is None or datetime.now(timezone.utc) - at > REUSE_FOR:
        build(path, rows)
    else:
        print(f"reusing {path} (built {at:%Y-%m-%d %H:%M}Z)", file=sys.stderr)
    return path


def time_runs(argv: list[str], runs: int, env: dict[str, str]) -> list[float]:
    """Milliseconds of ``runs`` whole-process runs of ``argv``, after one warm-up run."""
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        elapsed = (time.perf_counter() - t0) * 1000
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
        if i:
            times.append(elapsed)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=20, help="timed runs of each command (after one warm-up)")
    ap.add_argument("--file", type=Path, help="the history file (default: bench/results/startup_<rows>.db)")
    ap.add_argument("--rebuild", action="store_true", help="build the history file even if one can be reused")
    args = ap.parse_args()

    path = history_file(args.file or ROOT / "bench" / "results" / f"startup_{args.rows}.db", args.rows, args.rebuild)
    engine = make_engine(f"sqlite:///{path}")
    show_id = pick_show_id(engine)
    engine.dispose()
    # An installed package has its bytecode; compile ours too, or every run would compile it from
    # source (PYTHONDONTWRITEBYTECODE=1 stops the first run from writing it).
    for target in ("cli.py", "monitor", "tasks", "storage"):
        compile_one = compileall.compile_file if target.endswith(".py") else compileall.compile_dir
        compile_one(str(ROOT / target), quiet=1)

    taskmon = str(Path(sys.executable).parent / "taskmon")
    db = ["--db", f"sqlite:///{path}"]
    commands = [
        ("python -c pass (interpreter alone)", [sys.executable, "-c", "pass"]),
        ("taskmon --help", [taskmon, "--help"]),
        ("taskmon history --limit 10", [taskmon, "history", "--limit", "10", *db]),
        ("taskmon show ID", [taskmon, "show", show_id, *db]),
        ("taskmon stats --since 24h", [taskmon, "stats", "--since", "24h", *db]),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMON_")}
    load_before = os.getloadavg()
    results = [(label, time_runs(argv, args.runs, env)) for label, argv in commands]
    load_after = os.getloadavg()

    width = max(len(label) for label, _ in results)
    print(f"{args.rows:,} task runs in SQLite; {args.runs} whole-process runs each after a warm-up, milliseconds")
    print(f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%MZ}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"sqlite {sqlite3.sqlite_version}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{'command':<{width}}  {'median':>7}  {'p90':>7}")
    for label, times in results:
        p90 = statistics.quantiles(times, n=10)[-1] if len(times) > 1 else times[0]
        print(f"{label:<{width}}  {statistics.median(times):>7.0f}  {p90:>7.0f}")


if __name__ == "__main__":
    main()
