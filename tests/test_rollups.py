"""run_rollups equals a GROUP BY over task_runs after every commit of the real writer, on both databases.

Random orders of lifecycles (duplicates, reordering, retries, acks_late redelivery), a LOST
verdict later overturned by the real SUCCESS, and cleanup: after each step the rollups are
compared with the history grouped the same way.
"""
import random
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, text

from monitor.detectors import TaskVerdict
from monitor.ingest.buffer import Batch, Taken
from monitor.ingest.writer import Writer
from storage.detection import apply_verdict
from storage.rollups import KEY, LEVELS, MEASURES, TOTALS_KEY, TOTALS_MEASURES, grouped_sql, totals_grouped_sql
from storage.schema import task_runs
from tasks.cleanup import cleanup_task_history
from tests.eventgen import T0, lifecycle


def grouped(conn, dialect, level="minute"):
    return {tuple(r[:len(KEY)]): tuple(round(float(v), 6) for v in r[len(KEY):])
            for r in conn.exec_driver_sql(grouped_sql(dialect, level=level)).all()}


def rollups(conn, level="minute"):
    table, time_col = LEVELS[level]
    cols = ", ".join((time_col,) + KEY[1:] + MEASURES)
    rows = conn.execute(text(f"SELECT {cols} FROM {table}")).all()
    out = {}
    for r in rows:
        values = tuple(round(float(v), 6) for v in r[len(KEY):])
        if any(values):  # a key whose runs all moved away keeps a row of zeros
            out[tuple(r[:len(KEY)])] = values
    return out


def totals(conn, sql=None):
    k = len(TOTALS_KEY)
    sql = sql or f"SELECT {', '.join(TOTALS_KEY + TOTALS_MEASURES)} FROM run_totals"
    out = {}
    for r in conn.exec_driver_sql(sql).all():
        values = tuple(round(float(v), 6) for v in r[k:])
        if any(values):
            out[tuple(r[:k])] = values
    return out


def assert_consistent(engine, *, deleted=False):
    with engine.connect() as conn:
        expected = grouped(conn, engine.dialect.name)
        actual = rollups(conn)
        expected_hourly = grouped(conn, engine.dialect.name, "hour")
        actual_hourly = rollups(conn, "hour")
        expected_totals = totals(conn, totals_grouped_sql())
        actual_totals = totals(conn)
    assert expected, "the history is empty: nothing was compared"
    assert actual == expected
    assert actual_hourly == expected_hourly
    if not deleted:
        assert actual_totals == expected_totals
    else:  # cleanup takes nothing from the totals: they stay at least what is left
        for key, values in expected_totals.items():
            assert all(a >= e for a, e in zip(actual_totals[key], values)), key


def scripted(rng):
    tasks = []
    for i in range(60):
        t = T0 + rng.uniform(0, 600)  # over ten minutes: many rollup minutes
        name = rng.choice(["demo.add", "demo.mul", "demo.slow"])
        events = lifecycle(f"t-{i}", name=name, t=t, fail=rng.random() < 0.3)
        for e in events:
            if e["type"] == "task-succeeded":
                e["runtime"] = rng.choice([0.001, 0.03, 0.7, 4.0, 90.0, 5000.0])
        if i % 7 == 0:  # retried once, same id
            retried = {"type": "task-retried", "uuid": f"t-{i}", "hostname": "w1@host",
                       "exception": "RuntimeError('x')", "traceback": "tb", "timestamp": t + 0.03}
            second = [dict(e, timestamp=e["timestamp"] + 61, retries=1) for e in lifecycle(f"t-{i}", name=name, t=t)]
            events = events[:3] + [retried] + second[1:]
        if i % 11 == 0:  # acks_late redelivery: the same attempt received twice
            events.insert(2, dict(events[1], timestamp=events[1]["timestamp"] + 0.5))
        tasks.append(events)
    return tasks


def test_rollups_equal_the_grouped_history_through_random_orders_cleanup_and_overturn(engine):
    rng = random.Random(16)
    writer = Writer(engine, None, field_max_bytes=16384)
    events = [e for task in scripted(rng) for e in task]
    events += rng.sample(events, len(events) // 3)  # duplicates
    rng.shuffle(events)
    i = 0
    while i < len(events):
        n = rng.randint(1, 40)
        assert writer.write(Taken([Batch("pubsub", events[i:i + n])], []))
        assert_consistent(engine)
        i += n

    # A LOST verdict on a started task, then its real SUCCESS arrives and overturns it.
    started = lifecycle("overturned", t=T0 + 30)
    assert writer.write(Taken([Batch("pubsub", started[:3])], []))
    with engine.begin() as conn:
        row = conn.execute(select(task_runs).where(task_runs.c.task_id == "overturned")).mappings().one()
        verdict = TaskVerdict(task_id="overturned", name=row["name"], state="LOST", at=row["started_at"],
                              exception_type="WorkerLostError", message="worker lost", seen_state=row["state"],
                              seen_state_at=row["state_at"])
        assert apply_verdict(conn, verdict, datetime.now(timezone.utc))
    assert_consistent(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT sum(runs) FROM run_rollups WHERE state = 'LOST'")).scalar() == 1
    assert writer.write(Taken([Batch("pubsub", started[3:])], []))
    assert_consistent(engine)
    with engine.connect() as conn:
        assert conn.execute(select(task_runs.c.state).where(task_runs.c.task_id == "overturned")).scalar() == "SUCCESS"
        assert conn.execute(text("SELECT coalesce(sum(runs), 0) FROM run_rollups WHERE state = 'LOST'")).scalar() == 0

    # Cleanup by age and by a record cap takes the deleted runs out of the rollups.
    with engine.connect() as conn:
        total = conn.execute(text("SELECT count(*) FROM task_runs")).scalar()
    now = datetime.fromtimestamp(T0, timezone.utc) + timedelta(days=30, minutes=5)
    with engine.connect() as conn:
        totals_before = totals(conn)
    cleanup_task_history(engine, now=now, days=30, max_records=0, chunk_size=7)
    assert_consistent(engine, deleted=True)
    cleanup_task_history(engine, now=now, days=0, max_records=total // 3, chunk_size=7)
    assert_consistent(engine, deleted=True)
    with engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM task_runs")).scalar()
        assert 0 < left < total
        assert conn.execute(text("SELECT sum(runs) FROM run_rollups")).scalar() == left
        assert totals(conn) == totals_before
