"""The writer's helper process (monitor.ingest.prepare): the same rows as the writer thread, and no batch lost when it dies."""
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from monitor.ingest.buffer import Batch, EventBuffer, Taken
from monitor.ingest.prepare import HELPER_CODE, ROOT, Preparer, prepare_batch
from monitor.ingest.writer import Writer
from storage.runs import row_plan, runs_from_chunks
from storage.schema import task_runs
from tests.eventgen import T0, lifecycle


def mixed_events() -> list:
    """Lifecycles split over pieces, duplicates, secrets, an oversize field, a worker, malformed events."""
    events = []
    for i in range(40):
        events += lifecycle(f"t{i:03}", t=T0 + i, fail=i % 7 == 0, kwargs="{'api_token': 's3cret', 'n': %d}" % i)
    events += lifecycle("t000", t=T0)[1:3]  # duplicates of events already in the batch
    events.append({**lifecycle("big", t=T0)[0], "args": "x" * 50_000})
    events.append({"type": "worker-heartbeat", "hostname": "w1@host", "timestamp": T0 + 5, "active": 2,
                   "processed": 9, "loadavg": [0.5, 0.2, 0.1], "freq": 2.0})
    events += [{"type": "task-sent"}, {"type": "no-such-event", "uuid": "x", "timestamp": T0}, "not a dict",
               {"type": "task-started", "uuid": "t001", "timestamp": "yesterday"}]
    return events


def pieces(events: list, size: int = 37) -> list:
    return [orjson.dumps(events[i:i + size]) for i in range(0, len(events), size)]


def children_of(pid: int) -> list[int]:
    return [int(c) for f in Path(f"/proc/{pid}/task").glob("*/children") for c in f.read_text().split()]


def helper_pids(pid: int | None = None) -> list[int]:
    """Children of ``pid`` (this process) that run the preparing helper."""
    out = []
    for child in children_of(pid or os.getpid()):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes() if Path(f"/proc/{child}").exists() else b""
        if b"monitor.ingest.prepare" in cmdline:
            out.append(child)
    return out


def params_of(engine, ready) -> list:
    return runs_from_chunks(engine.dialect, ready.chunks, ready.rows).params


def test_the_helper_prepares_exactly_what_the_writer_thread_prepares(engine):
    batch = pieces(mixed_events()) + [lifecycle("listed")]  # and a piece orjson could not encode: a list
    here = prepare_batch(row_plan(engine.dialect), batch, 16384)
    preparer = Preparer(row_plan(engine.dialect), 16384, processes=1)
    try:
        there = preparer.submit(batch).result()
    finally:
        preparer.close()
    here_params, there_params = params_of(engine, here), params_of(engine, there)
    assert there_params == here_params and there.workers == here.workers
    assert there.malformed == here.malformed == {"malformed.missing_uuid": 1, "malformed.unknown_type": 1,
                                                 "malformed.not_dict": 1, "malformed.bad_field_type": 1}
    assert len(here_params) == here.rows == 42 and preparer.counters.get("prepare.helper_failures") == 0
    texts = [v for row in here_params for v in (row.values() if isinstance(row, dict) else row) if isinstance(v, str)]
    assert any("api_token" in t for t in texts) and not any("s3cret" in t for t in texts)


def test_the_helper_process_does_without_sqlalchemy(engine):
    # storage.params converts without it: importing it doubled the helper's memory. This is what
    # the helper runs (HELPER_CODE) on what it is sent, and then what it has imported.
    probe = HELPER_CODE.split(";")[0] + """
import pickle, sys
from monitor.ingest.prepare import prepare_batch
plan, batch = pickle.loads(sys.stdin.buffer.read())
print(prepare_batch(plan, batch, 16384).rows, "sqlalchemy" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", probe], input=pickle.dumps((row_plan(engine.dialect), pieces(mixed_events()))),
                          capture_output=True, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert done.stdout.split() == [b"41", b"False"], done.stderr


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the helper through /proc")
def test_a_helper_killed_with_9_loses_no_batch_and_a_new_one_takes_over(sqlite_url):
    from storage.db import make_engine, upgrade

    engine = make_engine(sqlite_url)
    upgrade(engine)
    preparer = Preparer(row_plan(engine.dialect), 16384, processes=1)
    writer = Writer(engine, EventBuffer(10_000), field_max_bytes=16384, preparer=preparer)
    try:
        assert writer.write(Taken(batches=[Batch.encode("test", lifecycle("before"))]))
        (helper,) = helper_pids()
        job = preparer.submit([orjson.dumps(lifecycle("during"))])
        os.kill(helper, signal.SIGKILL)
        ready = job.result()  # prepared in this thread: the helper died with the batch in hand, or before
        assert [row[0] for row in params_of(engine, ready)] == ["during"]
        assert preparer.counters.get("prepare.helper_failures") == 1
        assert writer.write(Taken(batches=[Batch.encode("test", lifecycle("after"))]))
        deadline = time.monotonic() + 10
        while not [p for p in helper_pids() if p != helper] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in helper_pids() if p != helper], "no new helper started"
        with engine.connect() as conn:
            states = dict(conn.execute(select(task_runs.c.task_id, task_runs.c.state)).all())
        assert states == {"before": "SUCCESS", "after": "SUCCESS"}  # "during" was prepared, not written
    finally:
        preparer.close()
        engine.dispose()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads the helper's RSS through /proc")
def test_an_idle_helper_that_grew_is_replaced_and_the_new_one_prepares_the_same(engine):
    """After a burst the writer replaces a helper whose heap kept what the burst's batches needed."""
    batch = pieces(mixed_events())
    preparer = Preparer(row_plan(engine.dialect), 16384, processes=1)
    try:
        first = preparer.submit(batch).result()
        (old,) = helper_pids()
        assert preparer.renew_grown() == 0  # a new helper is far below RENEW_RSS_BYTES
        job = preparer.submit(batch)
        assert preparer.renew_grown(most=0) == 0  # a batch in hand: never replaced under it
        assert params_of(engine, job.result()) == params_of(engine, first)
        assert preparer.renew_grown(most=0) == 1  # idle, and over the limit
        deadline = time.monotonic() + 10
        while not helper_pids() and time.monotonic() < deadline:
            time.sleep(0.05)  # until the new child has exec'd (before, its cmdline is ours)
        (new,) = helper_pids()
        assert new != old and not Path(f"/proc/{old}").exists()  # the old one exited and was reaped
        again = preparer.submit(batch).result()
        assert params_of(engine, again) == params_of(engine, first)
        assert preparer.counters.get("prepare.helpers_renewed") == 1
        assert preparer.counters.get("prepare.helper_failures") == 0
    finally:
        preparer.close()


def test_without_a_helper_the_writer_thread_prepares_batches_itself(sqlite_url):
    from storage.db import make_engine, upgrade

    engine = make_engine(sqlite_url)
    upgrade(engine)
    writer = Writer(engine, EventBuffer(10_000), field_max_bytes=16384)  # processes=0 by default
    try:
        assert writer.preparer.processes == 0
        assert writer.write(Taken(batches=[Batch.encode("test", lifecycle("a")), Batch("test", lifecycle("b"))]))
        assert helper_pids() == []
        with engine.connect() as conn:
            assert conn.execute(select(task_runs.c.task_id).order_by(task_runs.c.task_id)).scalars().all() == ["a", "b"]
    finally:
        engine.dispose()


def test_after_a_burst_the_sqlite_writer_closes_the_idle_connections_and_opens_them_again(sqlite_url, monkeypatch):
    """A SQLite connection keeps its page cache and compiled statements in the daemon's heap; once a
    burst is over and the writer has been idle, the pooled ones are closed, and the next batch is
    written on a connection opened as every other (WAL, foreign keys)."""
    from monitor.ingest import writer as writer_module
    from storage.db import make_engine, upgrade

    monkeypatch.setattr(writer_module, "RENEW_IDLE", 0.2)
    engine = make_engine(sqlite_url)
    upgrade(engine)
    buffer = EventBuffer(10_000)
    writer = Writer(engine, buffer, field_max_bytes=16384, batch_size=8, flush_interval=0.05)
    writer.start()
    try:
        buffer.put(Batch.encode("test", [e for i in range(4) for e in lifecycle(f"burst{i}")]))
        deadline = time.monotonic() + 10
        while writer.counters.get("events_written") < 16 and time.monotonic() < deadline:
            time.sleep(0.02)
        pool = engine.pool
        assert pool.checkedin() >= 1  # the writer's connection, back in the pool
        while engine.pool is pool and time.monotonic() < deadline:
            time.sleep(0.02)
        assert engine.pool is not pool and engine.pool.checkedin() == 0 and pool.checkedin() == 0
        buffer.put(Batch.encode("test", lifecycle("after")))
        while writer.counters.get("events_written") < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            ids = conn.execute(select(task_runs.c.task_id).order_by(task_runs.c.task_id)).scalars().all()
        assert ids == ["after", "burst0", "burst1", "burst2", "burst3"]
    finally:
        writer.stop(time.monotonic() + 5)
        writer.join(10)
        writer.preparer.close()
        engine.dispose()


def test_the_helper_exits_when_its_daemon_is_killed_with_9(fresh_redis, sqlite_url, tmp_path):
    import redis

    from storage.db import make_engine
    from tests.daemon_helpers import wait_for_runs
    from tests.eventgen import publish
    from tests.services import DaemonProcess

    daemon = DaemonProcess(fresh_redis.url, sqlite_url, "--source", "pubsub", logdir=tmp_path)
    engine = make_engine(sqlite_url)
    try:
        daemon.wait_log("subscribed to")
        publish(redis.Redis(port=fresh_redis.port), lifecycle("k1"))
        wait_for_runs(engine, ["k1"], states={"SUCCESS"})
        children = children_of(daemon.proc.pid)
        assert len(helper_pids(daemon.proc.pid)) == 1
        os.kill(daemon.proc.pid, signal.SIGKILL)  # the daemon alone, not its process group
        daemon.proc.wait()
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() for p in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in children if Path(f"/proc/{p}").exists()], "orphaned helper processes"
    finally:
        daemon.kill()
        engine.dispose()
