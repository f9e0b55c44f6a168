"""The per-minute rollups equal a GROUP BY over task_runs after every commit, on SQLite and PostgreSQL.

Events in random orders, duplicated and split into random batches go through the real writer; the
detector's LOST verdict is applied and then overturned by a real success; history cleanup deletes
old runs; after each step the rollups are compared with the grouped table.
"""
import random
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from monitor.detectors import TaskVerdict
from monitor.ingest.buffer import Batch, EventBuffer, Taken
from monitor.ingest.writer import Writer
from storage.db import make_engine, upgrade
from storage.detection import apply_verdict
from storage.rollup_dims import DIMS
from storage.rollup_dims import grouped_sql as dims_grouped_sql
from storage.rollups import KEY, MEASURES, drop_trigger_ddl, grouped_sql, rebuild, trigger_ddl
from tasks.cleanup import cleanup_task_history
from tests.eventgen import T0, lifecycle

NOW = datetime.fromtimestamp(T0, timezone.utc)


def rollups(conn):
    cols = ", ".join(KEY + MEASURES)
    rows = conn.execute(text(f"SELECT {cols} FROM run_rollups")).all()
    out = normalise(rows)
    # A rollup row whose runs all moved elsewhere or were deleted holds zeros (sums to rounding).
    empty = {k: v for k, v in out.items() if v[0] == 0}
    assert all(not any(v) for v in empty.values()), empty
    return {k: v for k, v in out.items() if k not in empty}


def grouped(conn):
    return normalise(conn.exec_driver_sql(grouped_sql(conn.dialect.name)).all())


def normalise(rows):
    out = {}
    for r in rows:
        minute = r[0] if isinstance(r[0], str) else r[0].astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:00.000000")
        out[(minute, *r[1:len(KEY)])] = tuple(round(float(v), 6) + 0.0 for v in r[len(KEY):])
    return out


def dim_rollups(conn, dim):
    """{(hour, key...): runs} of storage.rollup_dims' table of ``dim``, rows left with zero runs aside."""
    table, key, _ = DIMS[dim]
    rows = conn.execute(text(f"SELECT hour, {', '.join(key)}, runs FROM {table}")).all()
    assert all(r[-1] >= 0 for r in rows), rows
    return normalise_dim(r for r in rows if r[-1])


def normalise_dim(rows):
    out = {}
    for r in rows:
        hour = r[0] if isinstance(r[0], str) else r[0].astimezone(timezone.utc).strftime("%Y-%m-%d %H:00:00.000000")
        out[(hour, *r[1:-1])] = int(r[-1])
    return out


def assert_equal(engine):
    with engine.connect() as conn:
        want, got = grouped(conn), rollups(conn)
        for dim in DIMS:
            dim_want = normalise_dim(conn.exec_driver_sql(dims_grouped_sql(conn.dialect.name, dim)).all())
            assert dim_rollups(conn, dim) == dim_want, dim
            assert dim_want or not want, dim  # the history held runs, so the comparison was of something
    assert got == want
    return want


@pytest.fixture
def store(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def random_events(rng, n_tasks):
    events = []
    for i in range(n_tasks):
        t = T0 + rng.uniform(-7200, 0)
        evs = lifecycle(f"task-{i}", name=rng.choice(["a.add", "b.mul", "c.slow"]), t=t,
                        worker=rng.choice(["w1@h", "w2@h"]), fail=rng.random() < 0.2)
        if rng.random() < 0.3:  # a retry: the task fails once, then runs again
            retry = dict(evs[2], type="task-retried", exception="RuntimeError('again')", timestamp=t + 0.03)
            again = [dict(e, retries=1, timestamp=e["timestamp"] + 1) for e in evs[1:]]
            evs = evs[:3] + [retry] + again
        if rng.random() < 0.3:  # redelivery and duplicates
            evs += rng.sample(evs, k=2)
        events += evs
    rng.shuffle(events)
    return events


@pytest.mark.parametrize("seed", [1, 2])
def test_rollups_equal_the_grouped_history_through_the_real_writer(store, seed):
    rng = random.Random(seed)
    events = random_events(rng, 300)
    writer = Writer(store, EventBuffer(100_000), field_max_bytes=16384)
    while events:
        k = rng.randint(1, 200)
        batch, events = events[:k], events[k:]
        assert writer.write(Taken(batches=[Batch("test", batch)]))
        assert_equal(store)
    with store.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM task_runs")).scalar() == 300
        assert conn.execute(text("SELECT sum(runs) FROM run_rollups")).scalar() == 300


def test_a_lost_verdict_overturned_by_a_real_success_is_counted_once(store):
    writer = Writer(store, EventBuffer(1000), field_max_bytes=16384)
    sent, received, started, succeeded = lifecycle("overturned", t=T0 - 600)
    assert writer.write(Taken(batches=[Batch("test", [sent, received, started])]))
    with store.begin() as conn:
        row = conn.execute(text("SELECT state, state_at FROM task_runs WHERE task_id = 'overturned'")).one()
        verdict = TaskVerdict("overturned", "demo.add", "LOST", NOW, "WorkerLost", "worker went away",
                              row.state, _aware(row.state_at))
        assert apply_verdict(conn, verdict, NOW)
    assert {k[3]: v[0] for k, v in assert_equal(store).items()} == {"LOST": 1.0}
    assert worker_states(store) == {"LOST": 1}
    assert writer.write(Taken(batches=[Batch("test", [succeeded])]))
    assert {k[3]: v[0] for k, v in assert_equal(store).items()} == {"SUCCESS": 1.0}
    assert worker_states(store) == {"SUCCESS": 1}


def worker_states(store):
    with store.connect() as conn:
        return {k[-1]: n for k, n in dim_rollups(conn, "worker").items()}


def test_cleanup_takes_deleted_runs_out_of_the_rollups(store):
    rng = random.Random(3)
    writer = Writer(store, EventBuffer(100_000), field_max_bytes=16384)
    old = [e for i in range(50) for e in lifecycle(f"old-{i}", t=T0 - 40 * 86400 + i)]
    new = random_events(rng, 50)
    assert writer.write(Taken(batches=[Batch("test", old + new)]))
    before = assert_equal(store)
    cleanup_task_history(store, now=NOW, days=30, max_records=0, chunk_size=7)
    after = assert_equal(store)
    with store.connect() as conn:
        assert conn.execute(text("SELECT sum(runs) FROM run_rollups")).scalar() == 50
        assert conn.execute(text("SELECT sum(runs) FROM worker_rollups_hourly")).scalar() == 50
        assert conn.execute(text("SELECT sum(runs) FROM exception_rollups_hourly")).scalar() == 50
    assert sum(v[0] for v in before.values()) == 100 and sum(v[0] for v in after.values()) == 50


def _aware(value):
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def test_bucket_counts_follow_the_bounds():
    from storage.rollups import BOUNDS, bucket_of, quantile

    assert bucket_of(0.0) == 0 and bucket_of(0.005) == 0 and bucket_of(0.0051) == 1
    assert bucket_of(3600.0) == len(BOUNDS) - 1 and bucket_of(3600.1) == len(BOUNDS)
    counts = [0] * (len(BOUNDS) + 1)
    counts[bucket_of(0.3)] = 100  # (0.25, 0.5]
    est, lo, hi = quantile(counts, 0.5)
    assert (lo, hi) == (0.25, 0.5) and lo <= est <= hi


def test_rebuild_after_a_load_without_triggers_gives_the_rollups_the_grouped_history(store):
    rng = random.Random(4)
    writer = Writer(store, EventBuffer(100_000), field_max_bytes=16384)
    assert writer.write(Taken(batches=[Batch("test", random_events(rng, 120))]))
    dialect = store.dialect.name
    with store.begin() as conn:  # a bulk change with the triggers off, the rollups emptied behind it
        for ddl in drop_trigger_ddl(dialect):
            conn.exec_driver_sql(ddl)
        conn.exec_driver_sql("UPDATE task_runs SET retries = retries + 1 WHERE state = 'SUCCESS'")
        conn.exec_driver_sql("UPDATE task_runs SET worker = 'w9@h' WHERE state = 'FAILURE'")
        for table in ("run_rollups", "run_rollups_hourly", "run_totals", "worker_rollups_hourly"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
        counts = rebuild(conn, totals=True)
        for ddl in trigger_ddl(dialect):
            conn.exec_driver_sql(ddl)
    assert counts["run_rollups"] > 0 and counts["run_rollups_hourly"] > 0 and counts["run_totals"] > 0
    assert counts["worker_rollups_hourly"] > 0 and counts["exception_rollups_hourly"] > 0
    assert_equal(store)  # the minutes equal the GROUP BY, the changed retries and workers included
    with store.connect() as conn:
        hourly = normalise(conn.execute(text(f"SELECT hour, {', '.join(KEY[1:] + MEASURES)} FROM run_rollups_hourly")).all())
        assert hourly == normalise(conn.exec_driver_sql(grouped_sql(dialect, level="hour")).all())
        totals = conn.execute(text("SELECT sum(retried), sum(succeeded) FROM run_totals")).one()
        assert tuple(totals) == tuple(conn.execute(text(
            "SELECT sum(retries), sum(CASE WHEN state = 'SUCCESS' THEN 1 ELSE 0 END) FROM task_runs")).one())
