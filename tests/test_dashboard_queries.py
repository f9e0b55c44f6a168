"""The dashboard's reads and pure parts: the search box, keyset pages, the chart series, SVG escaping."""
from __future__ import annotations

from datetime import timedelta

import pytest

from monitor.http.charts import bar_chart, line_chart
from monitor.http.search import SearchError, parse_search
from storage.history import RunFilter, list_runs, page_runs
from storage.search import BadCursor
from storage.history import state_counts
from storage.rollup_stats import rollup_task_stats
from storage.series import (finished_series, queues_seen, rollup_series, rollup_state_counts, window_rollups,
                            worker_counts)
from tests.history_data import insert, now_utc, run


def test_the_search_box_reads_flowers_qualifiers_and_free_text():
    s = parse_search('name:reports.* state:failure,retry args:"2026 11" kwargs:force worker:celery@a boom x')
    assert (s.name, s.states, s.worker) == ("reports.*", ("FAILURE", "RETRY"), "celery@a")
    assert s.terms == {"args": "2026 11", "kwargs": "force"} and s.text == "boom x"
    assert parse_search("").text is None and parse_search("http://x").text == "http://x"


@pytest.mark.parametrize("query", ['args:"open', "state:", "name:"])
def test_a_search_that_cannot_be_read_is_one_clear_error(query):
    with pytest.raises(SearchError, match="search: "):
        parse_search(query)


@pytest.fixture
def history(engine):
    now = now_utc()
    rows = [run(f"t{i:02d}", "reports.daily" if i % 2 else "billing.charge", "FAILURE" if i % 3 == 0 else "SUCCESS",
                now - timedelta(minutes=60 - i), runtime=float(i % 7), args=f"({i}, 'needle-{i % 4}')",
                kwargs="{'user': 'ann'}" if i % 5 == 0 else "{}", result=f"'r{i}'",
                exception="ValueError('100% wrong_ly')" if i % 3 == 0 else None)
            for i in range(30)]
    insert(engine, rows)
    return engine, now, rows


def test_keyset_pages_walk_every_match_once_newest_first(history):
    engine, _, rows = history
    seen, cursor = [], None
    with engine.connect() as conn:
        while True:
            page, cursor = page_runs(conn, RunFilter(name="reports.*"), limit=4, cursor=cursor)
            seen += [r["task_id"] for r in page]
            if cursor is None:
                break
    expected = [r["task_id"] for r in sorted(rows, key=lambda r: r["seen_at"], reverse=True) if r["name"] == "reports.daily"]
    assert seen == expected


def test_field_qualifiers_look_inside_their_own_column_only(history):
    engine, _, rows = history
    with engine.connect() as conn:
        def ids(f):
            return {r["task_id"] for r in list_runs(conn, f, limit=100)}

        by_args = ids(RunFilter(states=("FAILURE",), contains=(("args", "needle-2"),), search="needle-2"))
        by_kwargs = ids(RunFilter(contains=(("kwargs", "ann"),)))
        not_in_result = ids(RunFilter(contains=(("result", "needle"),)))
        literal = ids(RunFilter(contains=(("exception", "100% wrong_ly"),)))
        wildcard = ids(RunFilter(contains=(("exception", "100_ wrong%ly"),)))
    assert by_args == {r["task_id"] for r in rows if r["state"] == "FAILURE" and "needle-2" in r["args"]} != set()
    assert by_kwargs == {r["task_id"] for r in rows if "ann" in r["kwargs"]}
    assert not_in_result == set()  # "needle" is in args, not in any result
    assert literal == {r["task_id"] for r in rows if r["exception"]} and wildcard == set()  # % and _ are literal
    with pytest.raises(ValueError, match="cannot search"):
        ids(RunFilter(contains=(("task_id; DROP", "x"),)))


def test_the_series_counts_completed_and_failed_runs_per_step(history):
    engine, now, rows = history
    with engine.connect() as conn:
        # Steps start 30 s off the minute the runs were seen on: a float's rounding cannot move a run.
        since = now - timedelta(hours=1, seconds=30)
        series = finished_series(conn, since, since + timedelta(hours=1), 6)
    assert sum(series["completed"]) == len(rows) and sum(series["failed"]) == sum(r["state"] == "FAILURE" for r in rows)
    # Ten minutes per step; the runs are one a minute from 60 minutes ago.
    assert series["completed"] == [10, 10, 10, 0, 0, 0]


def test_the_rollup_series_equals_the_series_of_the_runs_on_minute_and_hour_steps(engine):
    now = now_utc()
    end = now.replace(minute=0, second=0) + timedelta(hours=1)
    # Runs on and around the step boundaries, three days of them, some changed and deleted later.
    rows = [run(f"b{i:03d}", f"n{i % 3}", ("FAILURE", "SUCCESS", "STARTED")[i % 3],
                end - timedelta(minutes=37 * i, seconds=(0, 1, 59)[i % 3]), runtime=0.5) for i in range(120)]
    insert(engine, rows)
    insert(engine, [dict(rows[2], state="SUCCESS")])  # STARTED -> SUCCESS moves it into the counts
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM task_runs WHERE task_id = 'b003'")
    with engine.connect() as conn:
        for step, steps in ((timedelta(minutes=2), 30), (timedelta(minutes=48), 30), (timedelta(hours=6), 12)):
            fast = rollup_series(conn, end, step, steps)
            exact = finished_series(conn, end - step * steps, end, steps)
            assert fast["completed"] == exact["completed"] and fast["failed"] == exact["failed"], step
            assert fast["starts"] == exact["starts"]
        completed = {r["task_id"] for r in rows if r["state"] != "STARTED"
                     and end - timedelta(hours=72) <= r["seen_at"] < end}
        assert sum(rollup_series(conn, end, timedelta(hours=6), 12)["completed"]) == len(completed - {"b003"} | {"b002"})
        assert rollup_state_counts(conn) == state_counts(conn)
        # Per task name, what the overview shows equals the rollup stats of the same window.
        w = window_rollups(conn, end, timedelta(hours=6), 12)
        stats = rollup_task_stats(conn, RunFilter(since=end - timedelta(hours=72), until=end), now)
        assert [(t["name"], t["total"], t["runtime_p95"]) for t in w["tasks"]] == [
            (t["name"], t["total"], t["runtime"]["p95"]) for t in stats["tasks"]]
        assert sum(t["states"].get("FAILURE", 0) for t in w["tasks"]) == stats["totals"]["states"]["FAILURE"] > 0
        with pytest.raises(ValueError, match="whole minutes"):
            rollup_series(conn, end + timedelta(seconds=30), timedelta(minutes=2), 30)


def test_a_cursor_of_another_order_is_refused(history):
    engine, _, _ = history
    with engine.connect() as conn:
        _, cursor = page_runs(conn, RunFilter(), limit=2, sort="runtime")
        with pytest.raises(BadCursor):
            page_runs(conn, RunFilter(), limit=2, sort="seen", cursor=cursor)


def test_chart_labels_are_escaped_text():
    svg = str(bar_chart("p95", [("<script>alert(1)</script>", 2.0)], unit="s"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    line = str(line_chart("<b>t</b>", ["<i>"], [("<s>", [1.0, None, 2.0])]))
    assert "<b>" not in line and "<i>" not in line and line.count("<circle") == 2  # a gap splits the line


def test_worker_counts_and_queues_come_from_the_window_only(engine):
    now = now_utc()
    insert(engine, [run("a1", "x", "SUCCESS", now - timedelta(minutes=5), runtime=1.0, worker="celery@a", queue="q1"),
                    run("a2", "x", "FAILURE", now - timedelta(minutes=4), runtime=1.0, worker="celery@a", queue="q2"),
                    run("b1", "x", "SUCCESS", now - timedelta(days=3), runtime=1.0, worker="celery@b", queue="old")])
    with engine.connect() as conn:
        assert worker_counts(conn, now - timedelta(days=1)) == {"celery@a": {"succeeded": 1, "failed": 1, "total": 2}}
        assert queues_seen(conn, now - timedelta(days=1)) == ["q1", "q2"]
