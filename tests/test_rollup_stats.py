"""stats from the rollups (whole minutes) and task_runs (ragged edges) equals the exact stats:
counts, states, failure rate and throughput; each percentile lies within the bucket reported."""
import fnmatch
import math
import random
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from storage.history import RunFilter
from storage.rollup_stats import rollup_task_stats
from storage.runs import upsert_runs
from storage.schema import task_runs
from storage.stats import task_stats
from tests.history_data import run

NOW = datetime(2026, 11, 30, 12, 0, 30, 250000, tzinfo=timezone.utc)


def history(rng):
    rows = []
    for i in range(600):
        seen = NOW - timedelta(seconds=rng.uniform(0, 3 * 3600))
        state = rng.choice(["SUCCESS"] * 6 + ["FAILURE", "FAILURE", "STARTED", "REVOKED"])
        runtime = rng.lognormvariate(-1, 2) if state in ("SUCCESS", "FAILURE") else None
        rows.append(run(f"r{i}", rng.choice(["a.one", "b.two", "c.three", None]), state, seen,
                        wait=rng.choice([None, rng.uniform(0, 20)]), runtime=runtime, queue=rng.choice(["q1", "q2"])))
    return rows


def window_values(rows, f):
    """(name, value) of each run's runtime and queue wait within the filter's window."""
    out = {"runtime": [], "queue_wait": []}
    for row in rows:
        if (f.since is None or row["seen_at"] >= f.since) and row["seen_at"] < (f.until or NOW) and (
                f.name is None or fnmatch.fnmatchcase(row["name"] or "", f.name)):
            for kind, key in (("runtime", "runtime"), ("queue_wait", "queue_wait")):
                if row.get(key) is not None:
                    out[kind].append((row["name"], row[key]))
    return out


def check(conn, f, rows):
    raw = window_values(rows, f)
    exact = task_stats(conn, f, NOW)
    rolled = rollup_task_stats(conn, f, NOW)
    assert rolled["percentiles"] == "buckets"
    assert [t["name"] for t in rolled["tasks"]] == [t["name"] for t in exact["tasks"]]
    for e, r in zip(exact["tasks"] + [exact["totals"]], rolled["tasks"] + [rolled["totals"]]):
        for k in ("total", "states", "completed", "failure_rate", "throughput_per_min"):
            assert r[k] == e[k], (f, e["name"], k)
        for kind in ("runtime", "queue_wait"):
            values = sorted(v for name, v in raw[kind] if e["name"] is None and r is rolled["totals"] or name == e["name"])
            for p, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
                bounds = r[kind]["bounds"][p]
                if not values:
                    assert bounds is None
                    continue
                # The bucket holds the ceil(q * n)-th smallest value, as Prometheus's histogram_quantile ranks.
                kth = values[math.ceil(q * len(values)) - 1]
                lower, upper = bounds
                assert lower < kth and (upper is None or kth <= upper), (f, e["name"], kind, p, kth, bounds)
                assert r[kind][p] == upper
                # The exact (interpolated) percentile is no further than the neighbouring ranks.
                assert values[0] <= e[kind][p] <= values[-1]
    assert rolled["since"] == exact["since"] and rolled["until"] == exact["until"]
    return len(rolled["tasks"])


def test_rollup_stats_equal_the_exact_ones_over_ragged_windows(engine):
    rng = random.Random(7)
    with engine.begin() as conn:
        upsert_runs(conn, history(rng))
        rows = [dict(r) for r in conn.execute(select(task_runs)).mappings()]  # as stored (rounded)
    compared = 0
    with engine.connect() as conn:
        for since in (None, NOW - timedelta(hours=1, seconds=17.5), NOW - timedelta(minutes=2, seconds=3),
                      NOW - timedelta(seconds=20), NOW - timedelta(hours=2)):
            compared += check(conn, RunFilter(since=since), rows)
            compared += check(conn, RunFilter(since=since, name="a.*"), rows)
        check(conn, RunFilter(since=NOW - timedelta(hours=2, seconds=1.5), until=NOW - timedelta(minutes=30, seconds=9)), rows)
        compared += check(conn, RunFilter(name="b.two"), rows)
    assert compared > 20
