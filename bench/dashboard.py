"""bench/dashboard: server time of the dashboard's Overview and Tasks pages on a 1,000,000-run SQLite history.

A real `taskmon serve` process on this machine over bench/startup.py's history file (built once,
reused for a day); one client at a time, logged in with a session cookie, each request timed
from sending it to the last byte of the page. Pages whose data comes from the broker (the
overview's live queue depths) are read from a Redis the bench starts.

    python bench/dashboard.py                   # 30 requests of each page after a warm-up
    python bench/dashboard.py --rows 100000 --requests 50
"""
from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.startup import history_file  # noqa: E402
from monitor.redis_server import RedisServer, free_port  # noqa: E402
from storage.db import make_engine, upgrade  # noqa: E402

PAGES = [
    ("Overview, 1h window", "/?window=1h"),
    ("Overview, 24h window", "/?window=24h"),
    ("Overview, 30d window", "/?window=30d"),
    ("Tasks, newest 50", "/tasks"),
    ("Tasks, state FAILURE", "/tasks?state=FAILURE"),
    ("Tasks, name + state", "/tasks?q=name:tasks.data.export_data+state:SUCCESS"),
    ("Tasks, search args", "/tasks?q=args:4242"),
]


def taskmon(*args: str, db: str) -> str:
    env = dict(os.environ, TASKMON_DATABASE_URL=db)
    done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"taskmon {' '.join(args)}: {done.stderr}")
    return done.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=30, help="timed requests of each page (after one warm-up)")
    ap.add_argument("--rebuild", action="store_true", help="build the history file even if one can be reused")
    args = ap.parse_args()

    path = history_file(ROOT / "bench" / "results" / f"startup_{args.rows}.db", args.rows, args.rebuild)
    db = f"sqlite:///{path}"
    engine = make_engine(db)
    upgrade(engine)  # a file built by an older checkout gets the current schema (its search index too)
    engine.dispose()
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM api_tokens WHERE name = 'bench-dashboard'")
    conn.commit()
    conn.close()
    token = taskmon("token", "create", "--name", "bench-dashboard", "--role", "viewer", db=db)
    redis = RedisServer().start()
    port = free_port()
    log = open(ROOT / "bench" / "results" / "dashboard_serve.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port), "--db", db,
                               "--broker", redis.url], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        client = httpx.Client(base_url=base, timeout=60)
        for _ in range(300):
            try:
                client.get("/login")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        login = client.post("/login", data={"token": token, "next": "/"})
        if login.status_code != 303:
            raise SystemExit(f"login failed: {login.status_code} {login.text[:200]}")
        load_before = os.getloadavg()
        results = []
        for label, url in PAGES:
            times = []
            for i in range(args.requests + 1):
                t0 = time.perf_counter()
                response = client.get(url)
                elapsed = (time.perf_counter() - t0) * 1000
                if response.status_code != 200:
                    raise SystemExit(f"{url}: {response.status_code} {response.text[:300]}")
                if i:
                    times.append(elapsed)
            results.append((label, url, times))
        load_after = os.getloadavg()
    finally:
        server.terminate()
        server.wait(10)
        redis.close()

    width = max(len(label) for label, _, _ in results)
    print(f"{args.rows:,} task runs in SQLite; `taskmon serve`, one client, {args.requests} requests each after a "
          f"warm-up, milliseconds to the last byte")
    print(f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%MZ}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"sqlite {sqlite3.sqlite_version}; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    print(f"{'page':<{width}}  {'p50':>7}  {'p95':>7}  {'max':>7}")
    for label, url, times in results:
        p95 = statistics.quantiles(times, n=20)[-1] if len(times) > 1 else times[0]
        print(f"{label:<{width}}  {statistics.median(times):>7.0f}  {p95:>7.0f}  {max(times):>7.0f}   {url}")


if __name__ == "__main__":
    main()
