"""`taskmon dead-letters`, `replay` refusals and dry runs, `--since` parsing (scripted history, both databases)."""
import json
from datetime import datetime, timedelta, timezone

import pytest
from celery.utils.saferepr import saferepr
from click.testing import CliRunner

from cli import cli
from monitor.detectors.sweep import Sweeper
from tasks.replay import NotReplayable, parse_exact, plan_replay
from tasks.settings import Settings
from monitor.commands.timespec import resolve_time
from storage.runs import upsert_runs

NOW = datetime.now(timezone.utc).replace(microsecond=0)
LONG = saferepr(("x" * 2000,), 1024)  # celery's argsrepr of a 2000-character string: "('xxx...xxx...',)"


def run(task_id, name, state, minutes_ago, **fields):
    at = NOW - timedelta(minutes=minutes_ago)
    return {"task_id": task_id, "name": name, "state": state, "state_at": at, "seen_at": at - timedelta(seconds=1),
            "sent_at": at - timedelta(seconds=1), "queue": "celery", "args": "(1, 2)", "kwargs": "{}",
            "updated_at": at, **fields}


@pytest.fixture
def history(engine, db_url):
    """Four dead tasks and a healthy one, dead letters swept."""
    with engine.begin() as conn:
        upsert_runs(conn, [
            run("f-old", "billing.charge", "FAILURE", 180, exception="ValueError('card declined')",
                exception_type="ValueError"),
            run("f-new", "billing.charge", "FAILURE", 5, exception="ValueError('boom')\nmore", exception_type="ValueError"),
            run("t-cut", "reports.daily", "TIMEOUT", 10, args=LONG, exception="TimeLimitExceeded(60,)",
                exception_type="TimeLimitExceeded"),
            run("f-secret", "auth.login", "FAILURE", 20, kwargs="{'password': '***'}", exception="KeyError('u')"),
            run("ok", "billing.charge", "SUCCESS", 1, result="1"),
        ])
    Sweeper(engine, Settings()).sweep(NOW, feed_since=None)
    return db_url


def invoke(*args):
    return CliRunner().invoke(cli, list(args))


def test_dead_letters_lists_open_ones_newest_first_and_filters(history):
    result = invoke("dead-letters", "--db", history, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["task_id"] for r in rows] == ["f-new", "t-cut", "f-secret", "f-old"]
    assert rows[0]["reason"] == "failure" and rows[0]["state"] == "open" and rows[0]["exception_type"] == "ValueError"
    assert rows[1]["reason"] == "timeout"

    def ids(*args):
        result = invoke("dead-letters", "--db", history, "--json", *args)
        assert result.exit_code == 0, result.output
        return [r["task_id"] for r in json.loads(result.output)]

    assert ids("--name", "billing.*") == ["f-new", "f-old"]
    assert ids("--name", "billing.charg?", "--since", "1h") == ["f-new"]
    assert ids("--reason", "timeout") == ["t-cut"]
    assert ids("--name", "BILLING.*") == []  # task names are case-sensitive
    assert ids("--since", (NOW - timedelta(minutes=15)).isoformat()) == ["f-new", "t-cut"]

    table = invoke("dead-letters", "--db", history, "--reason", "failure", "--timezone", "Asia/Shanghai")
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split() == ["DEAD_AT", "REASON", "STATE", "NAME", "TASK_ID", "EXCEPTION", "REPLAYED_AS"]
    assert "f-new" in lines[1] and "ValueError('boom')" in lines[1] and "more" not in lines[1]
    assert (NOW.astimezone(timezone(timedelta(hours=8))) - timedelta(minutes=5)).strftime("%Y-%m-%d %H:%M") in lines[1]


def test_resolve_takes_a_letter_off_the_open_list(history):
    result = invoke("dead-letters", "resolve", "f-old", "--db", history, "--note", "refunded by hand")
    assert result.exit_code == 0 and "resolved f-old" in result.output
    open_ids = [r["task_id"] for r in json.loads(invoke("dead-letters", "--db", history, "--json").output)]
    assert "f-old" not in open_ids and "f-new" in open_ids
    resolved = json.loads(invoke("dead-letters", "--db", history, "--json", "--state", "resolved").output)
    assert [(r["task_id"], r["resolution"]) for r in resolved] == [("f-old", "refunded by hand")]
    assert invoke("dead-letters", "--db", history, "resolve", "f-new").exit_code == 0  # flags before the subcommand
    missing = invoke("dead-letters", "resolve", "nope", "--db", history)
    assert missing.exit_code == 1 and missing.output.count("\n") == 1 and "no dead letter for task nope" in missing.output


def test_replay_refuses_truncated_and_redacted_args_with_one_line_each(history):
    cut = invoke("replay", "t-cut", "--db", history, "--yes")
    assert cut.exit_code == 1 and cut.output.count("\n") == 1, cut.output
    assert "cannot replay t-cut exactly" in cut.output and "truncated" in cut.output
    assert "from tasks.relay import install; install(app)" in cut.output
    secret = invoke("replay", "f-secret", "--db", history, "--yes")
    assert secret.exit_code == 1 and "redacted" in secret.output and secret.output.count("\n") == 1
    unknown = invoke("replay", "nope", "--db", history, "--yes")
    assert unknown.exit_code == 1 and "no task nope in the history" in unknown.output


def test_bulk_dry_run_shows_what_would_and_would_not_be_replayed(history):
    result = invoke("replay", "--db", history, "--since", "1h", "--dry-run")
    assert result.exit_code == 1, result.output  # some cannot be replayed exactly
    assert "would replay f-new  billing.charge  queue celery" in result.output
    assert "cannot replay t-cut:" in result.output and "cannot replay f-secret:" in result.output
    assert "f-old" not in result.output  # died 3 h ago
    assert "1 to replay, 2 cannot be replayed exactly" in result.output
    clean = invoke("replay", "--db", history, "--name", "billing.*", "--dry-run")
    assert clean.exit_code == 0 and "2 to replay, 0 cannot" in clean.output


@pytest.mark.parametrize("args, message", [
    (["replay"], "give TASK_ID"),
    (["replay", "x", "--name", "a.*"], "not both"),
    (["dead-letters", "--since", "yesterday"], "'yesterday' is not a time"),
])
def test_usage_errors_exit_2(sqlite_url, args, message):
    result = invoke(*args, "--db", sqlite_url)
    assert result.exit_code == 2 and message in result.output, result.output


def test_since_accepts_iso_times_dates_and_spans():
    now = datetime(2026, 11, 23, 6, 0, tzinfo=timezone.utc)
    shanghai = timezone(timedelta(hours=8))
    assert resolve_time("15m", timezone.utc, now) == now - timedelta(minutes=15)
    assert resolve_time("2h", timezone.utc, now) == now - timedelta(hours=2)
    assert resolve_time("7d", timezone.utc, now) == now - timedelta(days=7)
    assert resolve_time("1.5h", timezone.utc, now) == now - timedelta(minutes=90)
    assert resolve_time("2026-11-23T06:00:00Z", timezone.utc, now) == now
    assert resolve_time("2026-11-23T14:00", shanghai, now) == now
    assert resolve_time("2026-11-23", shanghai, now) == datetime(2026, 11, 22, 16, 0, tzinfo=timezone.utc)
    assert resolve_time("2026-11-23T07:00:00+01:00", timezone.utc, now) == now
    for bad in ("yesterday", "15 minutes", "-2h", ""):
        with pytest.raises(ValueError):
            resolve_time(bad, timezone.utc, now)


@pytest.mark.parametrize("text", [
    LONG,                                   # a string cut at the 1024-character budget
    "(" + ", ".join(map(str, range(300))) + ", ...)",  # items cut
    "([[[...]]],)",                         # nesting cut at 3 levels
    "(1, 2",                                # cut mid-way
    "(<object object at 0x7f>,)",           # not a literal
    "('a', '***')",                         # a redacted secret
])
def test_only_complete_literals_are_exact(text):
    with pytest.raises(NotReplayable):
        parse_exact(text, "args", tuple)


def test_complete_literals_replay_with_their_queue():
    plan = plan_replay({"task_id": "a", "name": "n", "queue": "q", "args": "[1, 'x...']",
                        "kwargs": "{'when': None, 'ok': (True, 1.5)}"})
    assert (plan.args, plan.kwargs, plan.queue) == ((1, "x..."), {"when": None, "ok": (True, 1.5)}, "q")
    assert plan_replay({"task_id": "a", "name": "n", "queue": "q", "args": "()", "kwargs": "{}"}, "other").queue == "other"
    with pytest.raises(NotReplayable, match="queue is unknown"):
        plan_replay({"task_id": "a", "name": "n", "queue": None, "args": "()", "kwargs": "{}"})


def test_detection_settings_from_the_timeouts_table_the_environment_and_bad_values(tmp_path):
    from tasks.settings import SettingsError, load_settings

    path = tmp_path / "taskmon.toml"
    path.write_text('detect_interval = 2\nstuck_after = 90\n[timeouts]\n"tasks.reports.*" = 3600\n"tasks.charge" = 30\n')
    loaded = load_settings({}, environ={"TASKMON_LOST_AFTER_HEARTBEATS": "3"}, config_path=path)
    s = loaded.settings
    assert s.timeouts == (("tasks.reports.*", 3600.0), ("tasks.charge", 30.0))
    assert (s.detect_interval, s.stuck_after, s.lost_after_heartbeats, s.task_time_limit) == (2.0, 90.0, 3.0, 600.0)
    assert ("timeouts", "tasks.reports.*=3600,tasks.charge=30", "file") in loaded.rows()
    assert load_settings({}, environ={"TASKMON_TIMEOUTS": "a.b=5, c.*=1.5"}).settings.timeouts == (("a.b", 5.0), ("c.*", 1.5))
    for env, message in [({"TASKMON_TIMEOUTS": "a.b"}, "timeouts: expected name=seconds"),
                         ({"TASKMON_TIMEOUTS": "a.b=-1"}, "timeouts: a.b: must be more than 0"),
                         ({"TASKMON_LOST_AFTER_HEARTBEATS": "0.5"}, "lost_after_heartbeats: must be 1 or more"),
                         ({"TASKMON_DETECT_INTERVAL": "often"}, "detect_interval: expected float")]:
        with pytest.raises(SettingsError, match=message):
            load_settings({}, environ=env)
