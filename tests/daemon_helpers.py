"""Run the daemon in-process for a test, and wait for what it writes."""
from __future__ import annotations

import time
from contextlib import contextmanager

from sqlalchemy import select

from monitor.daemon import Daemon
from tasks.settings import Settings
from storage.db import make_engine, upgrade
from storage.schema import task_runs


@contextmanager
def running_daemon(broker_url: str, db_url: str, *, sources=("pubsub",), wait_connected=True, **settings):
    engine = make_engine(db_url)
    upgrade(engine)
    settings = {"event_sources": sources, "enable_events": False, "status_interval": 0.5, "flush_interval": 0.05,
                **settings}
    daemon = Daemon(Settings(broker_url=broker_url, database_url=db_url, **settings), engine)
    daemon.start()
    try:
        if wait_connected:
            for source in daemon.sources:
                assert source.connected.wait(10), f"{source.name} did not connect"
        yield daemon
    finally:
        daemon.shutdown()
        engine.dispose()


def wait_for_runs(engine, task_ids, states=None, timeout=30.0) -> dict:
    """Poll task_runs until every id is present (in one of ``states`` if given); fail saying what is missing."""
    ids = set(task_ids)
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            found = conn.execute(select(task_runs).where(task_runs.c.task_id.in_(ids))).mappings().all()
        rows = {r["task_id"]: dict(r) for r in found}
        elsewhere = {i: r["state"] for i, r in rows.items() if states is not None and r["state"] not in states}
        if len(rows) == len(ids) and not elsewhere:
            return rows
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    wanted = f" in {'/'.join(sorted(states))}" if states else ""
    problems = []
    if ids - rows.keys():
        problems.append(f"not stored: {', '.join(sorted(ids - rows.keys()))}")
    if elsewhere:
        problems.append(f"in another state: {', '.join(f'{i} ({s})' for i, s in sorted(elsewhere.items()))}")
    raise AssertionError(f"after {timeout}s waiting for {len(ids)} task runs{wanted}: {'; '.join(problems)}")
