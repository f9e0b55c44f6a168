"""`taskmon history/show/stats/workers/tail` through click, on SQLite and PostgreSQL."""
import csv
import io
import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from cli import cli
from tests.history_data import insert, load_sample, now_utc, run

RUN_KEYS = ["task_id", "name", "state", "worker", "queue", "seen_at", "started_at", "finished_at", "runtime",
            "queue_wait", "retries", "exception_type", "exception", "updated_at"]
STAT_KEYS = ["name", "total", "states", "completed", "failure_rate", "throughput_per_min", "runtime", "queue_wait"]
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def sample(engine, db_url):
    now = now_utc()
    load_sample(engine, now)
    return db_url, now


def taskmon(db_url, *args, tz="UTC"):
    return CliRunner().invoke(cli, [*args, "--db", db_url, "--timezone", tz])


def ok(result):
    assert result.exit_code == 0, result.output
    return result.stdout


def one_line_error(result, code):
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def table_ids(output):
    return [line.split()[0] for line in output.strip().splitlines()[2:]]


# -- history -------------------------------------------------------------------------------------

def test_history_table_is_newest_first_with_times_in_the_configured_zone(sample):
    db_url, now = sample
    out = ok(taskmon(db_url, "history", tz="Asia/Shanghai"))
    header, rule, *rows = out.strip().splitlines()
    assert header.split() == ["ID", "NAME", "STATE", "WORKER", "STARTED", "RUNTIME", "EXCEPTION"]
    assert table_ids(out) == ["r06", "r04", "r03", "r02", "r08", "r07", "r01", "r05"]
    started = (now - timedelta(minutes=40, seconds=-0.5)).astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
    r02 = next(r for r in rows if r.startswith("r02"))
    assert started in r02 and "1.0s" in r02 and "ValueError('bad day')" in r02


@pytest.mark.parametrize("args, expected", [
    (["--limit", "2"], ["r06", "r04"]),
    (["-n", "1"], ["r06"]),
    (["--name", "reports.*"], ["r02", "r01"]),
    (["--name", "mail.send", "--state", "failure"], ["r08"]),
    (["--state", "SUCCESS", "--state", "RETRY"], ["r04", "r03", "r07", "r01"]),
    (["--failed"], ["r02", "r08"]),
    (["--worker", "celery@b"], ["r04", "r02", "r05"]),
    (["--queue", "reports"], ["r02", "r01"]),
    (["--since", "45m"], ["r06", "r04", "r03", "r02"]),
    (["--since", "2h", "--until", "35m"], ["r02", "r08", "r07", "r01"]),
    (["--search", "Error("], ["r04", "r02", "r08"]),
    (["-q", "r07"], ["r07"]),
    (["--search", "done", "--name", "reports.*"], ["r01"]),
    (["--sort", "runtime", "-n", "3"], ["r03", "r01", "r02"]),
])
def test_history_options(sample, args, expected):
    db_url, _ = sample
    assert table_ids(ok(taskmon(db_url, "history", *args))) == expected


def test_history_since_naive_iso_is_in_the_configured_zone(sample):
    db_url, now = sample
    local = (now - timedelta(minutes=45)).astimezone(SHANGHAI).strftime("%Y-%m-%dT%H:%M:%S")
    assert table_ids(ok(taskmon(db_url, "history", "--since", local, tz="Asia/Shanghai"))) == ["r06", "r04", "r03", "r02"]
    utc = (now - timedelta(minutes=45)).strftime("%Y-%m-%dT%H:%M:%SZ")  # an explicit zone wins
    assert table_ids(ok(taskmon(db_url, "history", "--since", utc, tz="Asia/Shanghai"))) == ["r06", "r04", "r03", "r02"]


def test_history_json_has_stable_keys_and_local_times(sample):
    db_url, now = sample
    runs = json.loads(ok(taskmon(db_url, "history", "--json", "--limit", "3", tz="Asia/Shanghai")))
    assert [r["task_id"] for r in runs] == ["r06", "r04", "r03"]
    assert all(list(r) == RUN_KEYS for r in runs)
    seen = datetime.fromisoformat(runs[0]["seen_at"])
    assert seen.utcoffset() == timedelta(hours=8) and seen == now - timedelta(minutes=1)
    assert runs[1]["retries"] == 2 and runs[1]["exception_type"] == "TimeoutError" and runs[0]["runtime"] is None


def test_history_csv(sample):
    db_url, _ = sample
    rows = list(csv.DictReader(io.StringIO(ok(taskmon(db_url, "history", "--csv", "--failed")))))
    assert [r["task_id"] for r in rows] == ["r02", "r08"]
    assert list(rows[0]) == RUN_KEYS and rows[0]["exception"] == "ValueError('bad day')" and rows[0]["runtime"] == "1.0"
    assert rows[0]["worker"] == "celery@b" and rows[1]["worker"] == "celery@a"


def test_history_json_and_csv_together_is_a_usage_error(sample):
    db_url, _ = sample
    line = one_line_error(taskmon(db_url, "history", "--json", "--csv"), 2)
    assert "'--csv'" in line


@pytest.mark.parametrize("option", ["--since", "--until"])
@pytest.mark.parametrize("value", ["yesterday", "15x", "2026-13-01", ""])
def test_history_bad_time_is_one_line_naming_the_option(sqlite_url, option, value):
    line = one_line_error(taskmon(sqlite_url, "history", option, value), 2)
    assert line.startswith(f"Error: Invalid value for '{option}'") and "15m" in line


def test_history_with_an_unknown_state_is_one_line_listing_the_known_ones(sample, engine):
    db_url, now = sample
    insert(engine, [run("c01", "reports.build", "PROGRESS", now)])
    line = one_line_error(taskmon(db_url, "history", "--state", "SUCCESS", "--state", "bogus"), 2)
    assert line == ("Error: Invalid value for '--state': unknown state BOGUS; known: PENDING, RECEIVED, STARTED, "
                    "RETRY, SUCCESS, FAILURE, REVOKED, REJECTED, LOST, TIMEOUT, PROGRESS")
    assert table_ids(ok(taskmon(db_url, "history", "--state", "progress"))) == ["c01"]  # a custom state in the history
    assert ok(taskmon(db_url, "history", "--state", "LOST")).strip() == "no task runs match"  # known, none stored

def test_history_on_an_empty_database(engine, db_url):
    assert ok(taskmon(db_url, "history")).strip() == "no task runs match"
    assert json.loads(ok(taskmon(db_url, "history", "--json"))) == []
    assert ok(taskmon(db_url, "history", "--csv")).strip() == ",".join(RUN_KEYS)


# -- show ----------------------------------------------------------------------------------------

def test_show_prints_fields_timeline_workflow_and_texts(sample):
    db_url, now = sample
    out = ok(taskmon(db_url, "show", "r01", tz="Asia/Shanghai"))
    sent = (now - timedelta(minutes=50)).astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
    assert f"sent_at         {sent}" in out
    assert "timeline (Asia/Shanghai)" in out and "+500ms" in out and "+2.0s" in out
    assert "this run  r01  reports.daily  SUCCESS  (root)" in out and "child     r07  mail.send  SUCCESS" in out
    assert "workflow (3 run(s) under the same root)" in out
    assert "args:\n  ('2026-11-22',)" in out and "result:\n  'done'" in out


def test_show_grandchild_and_retries(sample):
    db_url, _ = sample
    out = ok(taskmon(db_url, "show", "r08"))
    assert out.index("root      r01") < out.index("parent    r07") < out.index("this run  r08")
    assert "SMTPError('down')" in out
    retried = ok(taskmon(db_url, "show", "r04"))
    assert "retried 2 time(s)" in retried


def test_show_json_has_stable_keys(sample):
    db_url, _ = sample
    detail = json.loads(ok(taskmon(db_url, "show", "r07", "--json")))
    assert list(detail) == ["run", "timeline", "attempts", "parent", "ancestors", "missing_parent", "root_id", "root", "children",
                            "workflow_size"]
    from storage.schema import task_runs

    assert list(detail["run"]) == [c.name for c in task_runs.columns] and detail["run"]["task_id"] == "r07"
    assert [s["event"] for s in detail["timeline"]] == ["sent", "received", "started", "finished"]
    assert list(detail["timeline"][0]) == ["event", "at", "after"]
    assert detail["parent"]["task_id"] == "r01" and list(detail["parent"]) == RUN_KEYS
    assert [c["task_id"] for c in detail["children"]] == ["r08"]


def test_show_unknown_task_is_one_line_exit_1(engine, db_url):
    line = one_line_error(taskmon(db_url, "show", "no-such-id"), 1)
    assert "no task run with id 'no-such-id'" in line


# -- stats ---------------------------------------------------------------------------------------

def test_stats_table_has_a_row_per_name_and_totals(sample):
    db_url, _ = sample
    out = ok(taskmon(db_url, "stats"))
    lines = out.strip().splitlines()
    assert lines[0].startswith("runs first seen")
    assert lines[1].split()[:4] == ["TASK", "TOTAL", "OK", "FAIL"]
    assert [line.split()[0] for line in lines[3:-1]] == ["billing.charge", "mail.send", "reports.daily", "TOTAL"]
    assert lines[-2].split()[1:5] == ["8", "3", "2", "1"]
    assert lines[-1].startswith("percentiles and max are histogram bucket bounds")
    exact = ok(taskmon(db_url, "stats", "--exact")).strip().splitlines()
    assert exact[-1].split()[1:5] == ["8", "3", "2", "1"]
    assert "bucket bounds" not in exact[-1]


def test_stats_since_and_name(sample):
    db_url, _ = sample
    out = ok(taskmon(db_url, "stats", "--since", "45m", "--name", "*.charge"))
    assert [line.split()[0] for line in out.strip().splitlines()[3:-1]] == ["billing.charge", "TOTAL"]


def test_stats_json_has_stable_keys(sample):
    db_url, _ = sample
    stats = json.loads(ok(taskmon(db_url, "stats", "--json", "--exact", "--name", "reports.*")))
    assert list(stats) == ["since", "until", "window_seconds", "tasks", "totals"]
    (reports,) = stats["tasks"]
    assert list(reports) == STAT_KEYS and list(stats["totals"]) == STAT_KEYS
    assert list(reports["states"]) == ["PENDING", "RECEIVED", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED",
                                       "REJECTED", "OTHER"]
    assert list(reports["runtime"]) == ["p50", "p95", "p99", "max"] and list(reports["queue_wait"]) == ["p50", "p95", "p99"]
    assert reports["failure_rate"] == 0.5 and reports["runtime"]["p50"] == 1.5 and reports["runtime"]["max"] == 2.0
    # From the rollups: the same counts; percentiles and max are the bounds of their histogram bucket.
    rolled = json.loads(ok(taskmon(db_url, "stats", "--json", "--name", "reports.*")))
    assert list(rolled) == ["since", "until", "window_seconds", "percentiles", "tasks", "totals"]
    assert rolled["percentiles"] == "buckets"
    (r,) = rolled["tasks"]
    assert r["states"] == reports["states"] and r["failure_rate"] == 0.5
    assert r["runtime"]["p50"] == 1.0 and r["runtime"]["bounds"]["p50"] == [0.75, 1.0]  # runs of 1 s and 2 s
    assert r["runtime"]["max"] == 2.5 and r["runtime"]["bounds"]["max"] == [1.0, 2.5]


def test_stats_on_an_empty_database_and_a_bad_since(engine, db_url):
    assert ok(taskmon(db_url, "stats")).strip() == "no task runs match"
    assert json.loads(ok(taskmon(db_url, "stats", "--json")))["tasks"] == []
    assert "'--since'" in one_line_error(taskmon(db_url, "stats", "--since", "last week"), 2)


# -- workers -------------------------------------------------------------------------------------

def listening_daemon(engine, now, feed_since):
    """A daemon_status row as a running daemon whose feed has been live since ``feed_since`` writes it."""
    from storage.health import write_status

    with engine.begin() as conn:
        write_status(conn, daemon_id="h:1", hostname="h", pid=1, sources="pubsub", started_at=feed_since,
                     heartbeat_at=now, counters={}, source_states={}, writer_lag=0.0, feed_since=feed_since)


def worker_states(db_url):
    out = ok(taskmon(db_url, "workers"))
    return {line.split()[0]: line.split()[1] for line in out.strip().splitlines()[2:]}


def test_workers_table_and_json(sample, engine):
    db_url, now = sample
    listening_daemon(engine, now, now - timedelta(hours=1))
    assert worker_states(db_url) == {"celery@a": "online", "celery@b": "lost", "celery@c": "offline"}
    rows = json.loads(ok(taskmon(db_url, "workers", "--json")))
    assert list(rows[0]) == ["hostname", "state", "status", "last_heartbeat", "heartbeat_age", "active", "processed",
                             "loadavg", "freq", "software", "first_seen"]
    assert rows[0]["processed"] == 120 and rows[1]["heartbeat_age"] >= 600


def test_a_silent_worker_is_unknown_while_no_daemon_listens_and_lost_once_the_sweep_said_so(sample, engine):
    from storage.detection import mark_worker_lost

    db_url, now = sample
    assert worker_states(db_url)["celery@b"] == "unknown"  # nothing was listening: its silence proves nothing
    listening_daemon(engine, now, now - timedelta(seconds=2))
    assert worker_states(db_url)["celery@b"] == "unknown"  # listening for less than its grace (2 x 2 s)
    with engine.begin() as conn:
        assert mark_worker_lost(conn, "celery@b", now - timedelta(minutes=10), now)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM daemon_status")
    assert worker_states(db_url) == {"celery@a": "online", "celery@b": "lost", "celery@c": "offline"}


def test_workers_judges_silence_by_lost_after_heartbeats(sample, engine):
    db_url, now = sample
    listening_daemon(engine, now, now - timedelta(hours=1))
    result = CliRunner().invoke(cli, ["workers", "--db", db_url], env={"TASKMON_LOST_AFTER_HEARTBEATS": "400"})
    assert result.exit_code == 0, result.output
    assert {line.split()[0]: line.split()[1] for line in result.stdout.strip().splitlines()[2:]}["celery@b"] == "online"


def test_workers_on_an_empty_database(engine, db_url):
    assert ok(taskmon(db_url, "workers")).strip() == "no workers seen yet"
    assert json.loads(ok(taskmon(db_url, "workers", "--json"))) == []


# -- tail ----------------------------------------------------------------------------------------

def tail_ids(output):
    return [line.split()[3] for line in output.strip().splitlines()]


def test_tail_shows_the_newest_runs_and_stops_after_max_polls(sample):
    db_url, _ = sample
    assert tail_ids(ok(taskmon(db_url, "tail", "--max-polls", "0"))) == ["r05", "r01", "r07", "r08", "r02", "r03", "r04", "r06"]
    assert tail_ids(ok(taskmon(db_url, "tail", "-n", "2", "--interval", "0", "--max-polls", "2"))) == ["r04", "r06"]
    assert tail_ids(ok(taskmon(db_url, "tail", "--lines", "1", "--name", "reports.*", "--max-polls", "0"))) == ["r02"]
    out = ok(taskmon(db_url, "tail", "--failed", "--max-polls", "0"))
    assert tail_ids(out) == ["r08", "r02"] and "SMTPError('down')" in out


def test_tail_on_an_empty_database(engine, db_url):
    assert ok(taskmon(db_url, "tail", "--interval", "0", "--max-polls", "1")) == ""
