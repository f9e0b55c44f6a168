"""The writer's lag: how long the oldest event not yet committed has waited (the detectors' guard)."""
import sqlite3
import time

from monitor.ingest.buffer import Batch, EventBuffer
from monitor.daemon import FEED_MAX_LAG
from monitor.ingest.writer import Writer
from storage.db import make_engine, upgrade


def task_event(uuid: str) -> dict:
    return {"type": "task-sent", "uuid": uuid, "timestamp": time.time(), "name": "sample.add"}


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_lag_counts_from_the_oldest_uncommitted_event_until_it_is_committed(sqlite_url, tmp_path):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    buffer = EventBuffer(1000)
    writer = Writer(engine, buffer, field_max_bytes=16384, flush_interval=0.05)
    assert writer.lag() == 0.0

    # Another process holds SQLite's write lock: the writer takes the batch but cannot commit it.
    blocker = sqlite3.connect(tmp_path / "taskmon.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        first = Batch("test", [task_event("t1")])
        buffer.put(first)
        second = Batch("test", [task_event("t2")])
        buffer.put(second)
        assert writer.lag(now=first.put_at + 5) == 5  # both wait in the buffer
        writer.start()
        wait_until(lambda: len(buffer) == 0)  # the writer holds both, uncommitted
        assert writer.working_since == first.put_at
        assert writer.lag(now=first.put_at + 3) == 3 > FEED_MAX_LAG
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    wait_until(lambda: writer.counters.get("events_written") == 2)
    wait_until(lambda: writer.working_since is None)
    assert writer.lag() == 0.0
    writer.stop(time.monotonic() + 5)
    writer.join(10)
    engine.dispose()
