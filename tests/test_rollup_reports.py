"""Reports, the failure-rate window and the API's stats from the rollups equal the exact GROUP BY
figures over task_runs: counts exactly, maximum runtimes within the bucket reported."""
import random
from collections import Counter
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from monitor.alerts.conditions import FAILED_STATES, FINISHED_STATES
from storage.rollup_stats import finished_counts
from storage.runs import upsert_runs
from storage.schema import task_runs
from tasks.report_data import report_data
from tests.api_fixtures import role_tokens, start_api  # noqa: F401  (fixture)
from tests.history_data import run

NOW = datetime(2026, 11, 30, 12, 0, 30, 250000, tzinfo=timezone.utc)
NAMES = ["billing.charge", "mail.send", "reports.build", None]
STATES = ["SUCCESS"] * 6 + ["FAILURE", "FAILURE", "TIMEOUT", "LOST", "RETRY", "STARTED", "REVOKED"]


def history(rng, n=700, hours=30):
    rows = []
    for i in range(n):
        seen = NOW - timedelta(seconds=rng.uniform(0, hours * 3600))
        state = rng.choice(STATES)
        ended = state in ("SUCCESS", "FAILURE", "RETRY")
        failed = state in ("FAILURE", "TIMEOUT", "LOST", "RETRY")
        rows.append(run(f"r{i:04d}", rng.choice(NAMES), state, seen,
                        wait=rng.choice([None, rng.uniform(0, 20)]),
                        runtime=rng.lognormvariate(0, 2) if ended else None,
                        queue=rng.choice(["q1", "q2", None]), worker=rng.choice(["celery@a", "celery@b", None]),
                        retries=rng.choice([0, 0, 0, 1, 2]),
                        exception_type=rng.choice(["ValueError", "KeyError"]) if failed else None))
    return rows


def stored(engine, rows):
    with engine.begin() as conn:
        upsert_runs(conn, rows)
        return [dict(r) for r in conn.execute(select(task_runs)).mappings()]  # as stored (rounded)


def windows():
    """Periods with ragged seconds at each end, whole hours, less than a minute, and all of it."""
    return [
        (NOW - timedelta(hours=26, minutes=7, seconds=13.5), NOW),
        (NOW - timedelta(hours=24, seconds=30.25), NOW - timedelta(hours=1, seconds=30.25)),  # whole hours
        (NOW - timedelta(hours=5, minutes=59, seconds=59), NOW - timedelta(hours=5, minutes=2, seconds=1)),
        (NOW - timedelta(minutes=3, seconds=41), NOW - timedelta(minutes=3, seconds=7)),
        (NOW - timedelta(days=3), NOW + timedelta(hours=1)),
    ]


def test_reports_from_the_rollups_equal_the_exact_reports(engine):
    rows = stored(engine, history(random.Random(11)))
    compared = ranked = 0
    with engine.connect() as conn:
        for start, end in windows():
            exact = report_data(conn, start, end, exact=True)
            rolled = report_data(conn, start, end)
            for key in ("totals", "states", "top_failing", "top_exceptions", "queues", "workers"):
                assert rolled[key] == exact[key], (start, end, key)
            assert [(r["task"], r["runs"], r["avg_runtime"]) for r in rolled["slowest"]] == \
                [(r["task"], r["runs"], r["avg_runtime"]) for r in exact["slowest"]], (start, end)
            for r, e in zip(rolled["slowest"], exact["slowest"]):
                runtimes = [row["runtime"] for row in rows if row["name"] == e["task"] and row["runtime"] is not None
                            and start <= row["seen_at"] < end]
                lower, upper = r["max_runtime_bounds"]
                assert lower < max(runtimes) and (upper is None or max(runtimes) <= upper), (e, r["max_runtime_bounds"])
                assert r["max_runtime"] == upper
            compared += exact["totals"]["tasks"]
            ranked += len(rolled["workers"]) + len(rolled["top_exceptions"])
    assert compared > 700  # the windows held runs: the comparison was not of empty reports
    assert ranked > 10  # and the workers and exceptions ranked were not empty lists


def test_a_period_without_runs_reports_zero_from_the_rollups(engine):
    stored(engine, history(random.Random(3), n=50, hours=2))
    with engine.connect() as conn:
        rolled = report_data(conn, NOW - timedelta(days=9), NOW - timedelta(days=8))
    assert rolled["totals"] == {"tasks": 0, "succeeded": 0, "failed": 0, "retries": 0, "failure_rate": None}
    assert rolled["states"] == {} and rolled["top_failing"] == [] and rolled["slowest"] == []


def test_the_failure_rate_window_from_the_rollups_equals_a_count_of_the_runs(engine):
    rows = stored(engine, history(random.Random(5), n=500, hours=3))
    with engine.connect() as conn:
        for seconds in (600.0, 3600.0, 45.5, 7777.25):
            since = NOW - timedelta(seconds=seconds)
            want: dict = {}
            for row in rows:
                if row["name"] and row["state"] in FINISHED_STATES and since <= row["seen_at"] < NOW:
                    c = want.setdefault(row["name"], Counter(total=0, failed=0))
                    c["total"] += 1
                    c["failed"] += row["state"] in FAILED_STATES
            got = finished_counts(conn, since, NOW, FINISHED_STATES, FAILED_STATES)
            assert got == {name: dict(c) for name, c in want.items()}, seconds
            assert sum(c["total"] for c in got.values()) > 0


def test_the_api_serves_stats_and_reports_from_the_rollups_unless_exact_is_asked(engine, db_url, start_api):
    recent = datetime.now(timezone.utc) - timedelta(hours=2)
    rng = random.Random(9)
    rows = [dict(r, seen_at=r["seen_at"] - NOW + recent) for r in history(rng, n=300, hours=20)]
    stored(engine, rows)
    day = (recent - timedelta(hours=6)).strftime("%Y-%m-%d")
    tokens = role_tokens(db_url)
    server = start_api(db_url)
    with server.client(tokens["viewer"]) as viewer:
        for params in ({"since": "7h"}, {"since": "19h", "until": "3h", "name": "mail.*"}):
            rolled = viewer.get("/api/v1/stats", params=params).json()
            exact = viewer.get("/api/v1/stats", params={**params, "exact": "true"}).json()
            assert rolled["percentiles"] == "buckets" and exact["percentiles"] == "exact"
            assert rolled["tasks"] and [t["name"] for t in rolled["tasks"]] == [t["name"] for t in exact["tasks"]]
            for r, e in zip(rolled["tasks"] + [rolled["totals"]], exact["tasks"] + [exact["totals"]]):
                assert (r["total"], r["states"], r["failure_rate"]) == (e["total"], e["states"], e["failure_rate"])
                lower, upper = r["runtime"]["bounds"]["max"]
                assert lower < e["runtime"]["max"] and (upper is None or e["runtime"]["max"] <= upper)
        rolled = viewer.get("/api/v1/reports/daily", params={"date": day}).json()
        exact = viewer.get("/api/v1/reports/daily", params={"date": day, "exact": "true"}).json()
        assert rolled["totals"] == exact["totals"] and rolled["totals"]["tasks"] > 0
        assert all("max_runtime_bounds" in r for r in rolled["slowest"])
        assert not any("max_runtime_bounds" in r for r in exact["slowest"])
        text = viewer.get("/api/v1/reports/daily", params={"date": day, "format": "text"})
        assert text.status_code == 200 and "<= " in text.text
