"""Statistics per task name on SQLite and PostgreSQL: counts, rates, and percentiles that agree."""
import math
import random
from datetime import timedelta

import pytest

from storage.db import make_engine, upgrade
from storage.history import RunFilter, list_runs
from storage.stats import STATES, read_snapshot, task_stats
from tests.history_data import insert, now_utc, run


def percentile_cont(values, p):
    """The reference: PostgreSQL's percentile_cont (linear interpolation between closest ranks)."""
    xs = sorted(values)
    h = p * (len(xs) - 1)
    lo, hi = math.floor(h), math.ceil(h)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def test_reference_matches_hand_computed_values():
    values = list(range(1, 11))
    assert percentile_cont(values, 0.5) == 5.5
    assert percentile_cont(values, 0.95) == pytest.approx(9.55)
    assert percentile_cont(values, 0.99) == pytest.approx(9.91)
    assert percentile_cont([7.0], 0.99) == 7.0


def skewed_runs(now):
    """Names with 1, 2, 37 and 100 runs; ties, NULL runtimes, and queue waits from 0 to minutes."""
    rng = random.Random(42)
    rows = []
    sizes = {"solo": 1, "pair": 2, "mid": 37, "big": 100}
    for name, size in sizes.items():
        for i in range(size):
            runtime = None if (name == "big" and i % 10 == 0) else round(rng.choice([0.5, 1.0, 1.0, rng.lognormvariate(0, 1)]), 4)
            wait = round(rng.expovariate(2.0), 3) if i % 7 else round(rng.uniform(60, 300), 3)
            state = "FAILURE" if i % 6 == 1 else "SUCCESS"
            rows.append(run(f"{name}-{i}", name, state, now - timedelta(seconds=10 * i + 1), wait=wait, runtime=runtime))
    return rows


def test_percentiles_equal_percentile_cont_on_both_databases(engine):
    now = now_utc()
    rows = skewed_runs(now)
    insert(engine, rows)
    with engine.connect() as conn:
        stats = task_stats(conn, RunFilter(), now)
    by_name = {t["name"]: t for t in stats["tasks"]}
    assert sorted(by_name) == ["big", "mid", "pair", "solo"]
    for name, entry in [*by_name.items(), (None, stats["totals"])]:
        mine = [r for r in rows if name is None or r["name"] == name]
        runtimes = [r["runtime"] for r in mine if r["runtime"] is not None]
        waits = [(r["started_at"] - r["sent_at"]).total_seconds() for r in mine]
        for key, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            assert entry["runtime"][key] == pytest.approx(percentile_cont(runtimes, p), rel=1e-9, abs=1e-9), (name, key)
            assert entry["queue_wait"][key] == pytest.approx(percentile_cont(waits, p), rel=1e-9, abs=1e-9), (name, key)
        assert entry["runtime"]["max"] == max(runtimes)


def test_counts_failure_rate_and_throughput(engine):
    now = now_utc()
    m = lambda minutes: now - timedelta(minutes=minutes)  # noqa: E731
    insert(engine, [
        run("a1", "a", "SUCCESS", m(50), runtime=1.0),
        run("a2", "a", "SUCCESS", m(40), runtime=2.0),
        run("a3", "a", "FAILURE", m(30), runtime=3.0),
        run("a4", "a", "STARTED", m(20)),
        run("a5", "a", "PROGRESS", m(10)),  # a custom state
        run("b1", "b", "REVOKED", m(5), wait=None),
        run("old", "a", "SUCCESS", m(600), runtime=9.0),
    ])
    with engine.connect() as conn:
        stats = task_stats(conn, RunFilter(since=m(60)), now)
        only_b = task_stats(conn, RunFilter(since=m(60), name="b*"), now)
    a, b = stats["tasks"]
    assert a["name"] == "a" and a["total"] == 5 and a["completed"] == 3
    assert a["states"] == {**{s: 0 for s in STATES}, "SUCCESS": 2, "FAILURE": 1, "STARTED": 1, "OTHER": 1}
    assert a["failure_rate"] == pytest.approx(1 / 3)
    assert a["throughput_per_min"] == pytest.approx(3 / 60)
    assert a["runtime"] == {"p50": 2.0, "p95": pytest.approx(2.9), "p99": pytest.approx(2.98), "max": 3.0}
    assert b["failure_rate"] is None and b["throughput_per_min"] == 0.0 and b["queue_wait"]["p50"] is None
    assert stats["totals"]["total"] == 6 and stats["totals"]["states"]["REVOKED"] == 1
    assert stats["since"] == m(60) and stats["until"] == now and stats["window_seconds"] == 3600
    assert [t["name"] for t in only_b["tasks"]] == ["b"]


def test_without_since_the_window_starts_at_the_first_run(engine):
    now = now_utc()
    insert(engine, [run("a1", "a", "SUCCESS", now - timedelta(minutes=10), runtime=1.0)])
    with engine.connect() as conn:
        stats = task_stats(conn, RunFilter(), now)
    assert stats["since"] == now - timedelta(minutes=10)
    assert stats["totals"]["throughput_per_min"] == pytest.approx(0.1)


def test_stats_of_an_empty_history(engine):
    now = now_utc()
    with engine.connect() as conn:
        stats = task_stats(conn, RunFilter(), now)
    assert stats["tasks"] == [] and stats["since"] is None and stats["window_seconds"] is None
    totals = stats["totals"]
    assert totals["total"] == 0 and totals["failure_rate"] is None and totals["throughput_per_min"] is None
    assert totals["runtime"] == {"p50": None, "p95": None, "p99": None, "max": None}


def test_stats_read_one_snapshot_on_sqlite_while_the_daemon_writes(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    now = now_utc()
    insert(engine, [run("a1", "a", "SUCCESS", now, runtime=1.0)])
    with engine.connect() as reader:
        with read_snapshot(reader):
            assert len(list_runs(reader)) == 1
            insert(engine, [run("a2", "a", "SUCCESS", now, runtime=2.0)])  # another connection commits
            assert len(list_runs(reader)) == 1
        assert len(list_runs(reader)) == 2
    engine.dispose()
