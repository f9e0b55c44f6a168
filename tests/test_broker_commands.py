"""`taskmon send/result/inspect/purge/ping/worker/schedule run|status` against real workers on the test Redis."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import select

from cli import cli
from storage.db import make_engine
from storage.schema import audit_logs
from tasks.client import client_app
from tests.daemon_helpers import running_daemon, wait_for_runs
from tests.services import TasksWorkers

pytestmark = pytest.mark.slow


def backend_of(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/2"


def taskmon(*args, backend: str | None = None, input: str | None = None):
    env = {"TASKMON_RESULT_BACKEND": backend} if backend else {}
    # click 8.2+: result.output holds stdout and stderr interleaved, as a terminal shows them
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, input=input)


def ok(result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


@pytest.fixture
def worker(redis_url, start_worker):
    return start_worker(redis_url, queues="celery,other", env={"SAMPLE_RESULT_BACKEND": backend_of(redis_url)})


# -- send / result ------------------------------------------------------------------------------

def test_send_with_args_kwargs_queue_and_countdown_runs_and_shows_in_history(redis_url, sqlite_url, worker):
    with running_daemon(redis_url, sqlite_url) as daemon:
        asked_at = datetime.now(timezone.utc)
        out = ok(taskmon("send", "sample.add", "--args", "[2]", "--kwargs", '{"y": 3}', "--queue", "other",
                         "--countdown", "1", "--broker", redis_url))
        task_id = out.strip()
        row = wait_for_runs(daemon.engine, [task_id], states={"SUCCESS"})[task_id]
    assert (row["name"], row["args"], row["kwargs"], row["queue"], row["worker"]) == \
        ("sample.add", "[2]", "{'y': 3}", "other", worker.hostname)
    assert row["result"] == "5"
    # the countdown became the message's ETA, and the worker held the task back until then
    assert row["eta"] >= asked_at + timedelta(seconds=1) and row["started_at"] >= row["eta"]


def test_send_wait_prints_the_result_and_json_has_it(redis_url, worker):
    out = ok(taskmon("send", "sample.add", "--args", "[20, 22]", "--wait", "--timeout", "15", "--broker", redis_url,
                     backend=backend_of(redis_url)))
    lines = out.splitlines()
    assert lines[1:] == ["state: SUCCESS", lines[2], "result: 42"] and lines[2].startswith("done:")
    data = json.loads(ok(taskmon("send", "sample.add", "--args", "[1, 1]", "--wait", "--json", "--timeout", "15",
                                 "--broker", redis_url, backend=backend_of(redis_url))))
    assert data["result"]["state"] == "SUCCESS" and data["result"]["result"] == 2


def test_send_wait_on_a_failure_exits_1_with_the_exception(redis_url, worker):
    result = taskmon("send", "sample.fail", "--args", '["no luck"]', "--wait", "--timeout", "15", "--broker", redis_url,
                     backend=backend_of(redis_url))
    assert result.exit_code == 1
    assert "state: FAILURE" in result.output and "exception: ValueError: no luck" in result.output


@pytest.mark.parametrize("option,value,message", [
    ("--args", "{", "not valid JSON"), ("--args", '{"a": 1}', "must be a JSON list"),
    ("--kwargs", "[1]", "must be a JSON object"), ("--kwargs", "nope", "not valid JSON"),
    ("--eta", "tomorrow", "not an ISO 8601 time"),
])
def test_send_bad_json_or_time_is_one_line_exit_2(redis_url, option, value, message):
    result = taskmon("send", "sample.add", option, value, "--broker", redis_url)
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_result_reads_a_task_the_daemon_never_saw(redis_url, worker):
    app = client_app(redis_url, backend_of(redis_url))
    try:
        task_id = app.send_task("sample.fail", args=["token=abc123 expired"]).id
        app.AsyncResult(task_id).get(timeout=15, propagate=False)
    finally:
        app.close()
    out = ok(taskmon("result", task_id, "--broker", redis_url, backend=backend_of(redis_url)))
    assert "state: FAILURE" in out and "ValueError" in out and "Traceback (most recent call last)" in out
    assert "abc123" not in out  # secrets in the exception and traceback are redacted
    data = json.loads(ok(taskmon("result", task_id, "--json", "--broker", redis_url, backend=backend_of(redis_url))))
    assert data["state"] == "FAILURE" and data["ready"] is True


def test_result_and_send_wait_without_a_backend_say_how_to_configure_one(redis_url):
    result = taskmon("result", "abc", "--broker", redis_url)
    assert result.exit_code == 2 and "TASKMON_RESULT_BACKEND" in result.output
    waited = taskmon("send", "sample.add", "--args", "[1, 2]", "--wait", "--broker", redis_url)
    assert waited.exit_code == 2 and "TASKMON_RESULT_BACKEND" in waited.output
    assert redis.Redis.from_url(redis_url).llen("celery") == 0  # refused before anything was sent


def test_show_adds_the_backends_view_of_a_task_the_history_lacks(redis_url, sqlite_store, worker):
    app = client_app(redis_url, backend_of(redis_url))
    try:
        task_id = app.send_task("sample.add", args=[3, 4]).id
        app.AsyncResult(task_id).get(timeout=15)
    finally:
        app.close()
    out = ok(taskmon("show", task_id, "--db", sqlite_store, "--broker", redis_url, backend=backend_of(redis_url)))
    assert "not in the history" in out and "state: SUCCESS" in out and "result: 7" in out


# -- inspect ------------------------------------------------------------------------------------

def test_inspect_active_shows_a_running_task_and_a_silent_worker_exits_1(redis_url, worker):
    app = client_app(redis_url)
    task_id = app.send_task("sample.sleep", args=[8]).id
    app.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        out = ok(taskmon("inspect", "active", "--broker", redis_url))
        if task_id in out:
            break
        time.sleep(0.3)
    assert f"{worker.hostname}:" in out and task_id in out and "sample.sleep" in out
    data = json.loads(ok(taskmon("inspect", "registered", "--json", "--broker", redis_url)))
    assert "sample.add" in data["replies"][worker.hostname]
    result = taskmon("inspect", "stats", "--worker", worker.hostname, "--worker", "ghost@nowhere", "--timeout", "1",
                     "--broker", redis_url)
    assert result.exit_code == 1 and "no reply within 1s from: ghost@nowhere" in result.output
    assert f"{worker.hostname}:" in result.output


def until(predicate, what: str, timeout: float = 20.0):
    """Wait for predicate() to be true; fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    pytest.fail(f"after {timeout}s: {what}")


def test_each_inspect_subcommand_shows_what_the_worker_holds_where_it_is(redis_url, start_worker):
    # One process, and room for two prefetched messages: one task runs, the next waits reserved.
    worker = start_worker(redis_url, queues="celery", concurrency=1, extra=["--prefetch-multiplier", "2"])
    app = client_app(redis_url)
    eta_id = app.send_task("sample.add", args=[1, 1], countdown=300).id
    long_id = app.send_task("sample.sleep", args=[30]).id
    until(lambda: long_id in ok(taskmon("inspect", "active", "--broker", redis_url)), f"{long_id} active")
    waiting_id = app.send_task("sample.add", args=[40, 2]).id
    until(lambda: waiting_id in ok(taskmon("inspect", "reserved", "--broker", redis_url)), f"{waiting_id} reserved")
    revoked_id = "0f9e8d7c-revoked-by-the-test"
    app.control.revoke(revoked_id)
    texts = {what: ok(taskmon("inspect", what, "--timeout", "2", "--broker", redis_url))
             for what in ("active", "reserved", "scheduled", "registered", "stats", "revoked", "conf", "active-queues")}
    data = {what: json.loads(ok(taskmon("inspect", what, "--json", "--timeout", "2", "--broker", redis_url)))
            for what in texts}
    app.control.revoke(long_id, terminate=True)  # the worker need not wait 30 s to stop
    app.close()
    for what, text in texts.items():
        assert text.startswith(f"{worker.hostname}:\n"), (what, text)
        assert data[what]["ok"] and list(data[what]["replies"]) == [worker.hostname], what
    replies = {what: d["replies"][worker.hostname] for what, d in data.items()}
    # each task shows where it is, and only there
    where = {what: {t for t in (long_id, waiting_id, eta_id) if t in texts[what]}
             for what in ("active", "reserved", "scheduled")}
    assert where == {"active": {long_id}, "reserved": {waiting_id}, "scheduled": {eta_id}}
    assert "sample.sleep" in texts["active"] and "[30]" in texts["active"]
    assert [t["id"] for t in replies["active"]] == [long_id]
    assert [t["id"] for t in replies["reserved"]] == [waiting_id]
    assert [t["request"]["id"] for t in replies["scheduled"]] == [eta_id] and replies["scheduled"][0]["eta"]
    assert "  sample.add" in texts["registered"] and "sample.sleep" in replies["registered"]
    assert f"  {revoked_id}" in texts["revoked"] and revoked_id in replies["revoked"]
    assert "max 1, processes 1" in texts["stats"] and replies["stats"]["pool"]["max-concurrency"] == 1
    assert "  task_acks_late = True" in texts["conf"] and replies["conf"]["task_acks_late"] is True
    assert "celery" in texts["active-queues"] and [q["name"] for q in replies["active-queues"]] == ["celery"]


def test_inspect_with_no_worker_exits_1(redis_url):
    result = taskmon("inspect", "active", "--timeout", "0.5", "--broker", redis_url)
    assert result.exit_code == 1 and "no worker answered" in result.output


# -- purge --------------------------------------------------------------------------------------

def test_purge_empties_the_named_queue_with_priorities_refuses_unknown_and_is_audited(redis_url, sqlite_store,
                                                                                    start_worker):
    # A worker that consumes "doomed" and "kept" but is busy, so that their messages wait.
    start_worker(redis_url, queues="doomed,kept", concurrency=1)
    app = client_app(redis_url)
    sleeper = app.send_task("sample.sleep", args=[30], queue="doomed").id
    time.sleep(1.0)
    for pri in (0, 6, 9):
        app.send_task("sample.add", args=[1, 1], queue="doomed", priority=pri)
    app.send_task("sample.add", args=[1, 1], queue="kept")
    app.close()
    client = redis.Redis.from_url(redis_url)
    refused = taskmon("purge", "typo_queue", "--yes", "--db", sqlite_store, "--broker", redis_url)
    assert refused.exit_code == 2 and "no running worker consumes typo_queue" in refused.output
    declined = taskmon("purge", "doomed", "--db", sqlite_store, "--broker", redis_url, input="n\n")
    assert declined.exit_code == 1 and client.exists("doomed") == 1
    out = ok(taskmon("purge", "doomed", "--db", sqlite_store, "--broker", redis_url, input="y\n"))
    assert "doomed: 3 messages deleted  (by priority: 0: 1, 6: 1, 9: 1)" in out
    assert client.exists("doomed", "doomed\x06\x166", "doomed\x06\x169") == 0
    assert client.llen("kept") == 1
    forced = json.loads(ok(taskmon("purge", "typo_queue", "--force", "--yes", "--json", "--db", sqlite_store,
                                   "--broker", redis_url)))
    assert forced == [{"queue": "typo_queue", "messages": 0, "by_priority": {}, "exists": None}]
    engine = make_engine(sqlite_store)
    with engine.connect() as conn:
        rows = conn.execute(select(audit_logs).order_by(audit_logs.c.id)).mappings().all()
    engine.dispose()
    assert [(r["action"], r["target"]) for r in rows] == [("purge", "doomed"), ("purge", "typo_queue")]
    assert json.loads(rows[0]["detail"])["messages"] == {"doomed": 3}
    control = client_app(redis_url)
    control.control.revoke(sleeper, terminate=True)  # the worker need not wait for it to stop
    control.close()


def test_purge_all_empties_every_consumed_queue_and_no_other(redis_url, sqlite_store, start_worker):
    # A worker that consumes "first" and "second" but is busy (one process, one prefetched message),
    # so that what is sent to them waits there.
    start_worker(redis_url, queues="first,second", concurrency=1)
    control = client_app(redis_url)
    sleeper = control.send_task("sample.sleep", args=[30], queue="first").id
    until(lambda: sleeper in ok(taskmon("inspect", "active", "--broker", redis_url)), f"{sleeper} active")
    for queue, priority in (("first", 0), ("first", 9), ("second", 3), ("unconsumed", 0)):
        control.send_task("sample.add", args=[1, 1], queue=queue, priority=priority)
    data = json.loads(ok(taskmon("purge", "--all", "--yes", "--json", "--db", sqlite_store, "--broker", redis_url)))
    control.control.revoke(sleeper, terminate=True)
    control.close()
    assert data == [{"queue": "first", "messages": 2, "by_priority": {"0": 1, "9": 1}, "exists": None},
                    {"queue": "second", "messages": 1, "by_priority": {"3": 1}, "exists": None}]
    client = redis.Redis.from_url(redis_url)
    assert client.exists("first", "first\x06\x169", "second\x06\x163") == 0 and client.llen("unconsumed") == 1


def test_purge_reads_the_keys_under_the_brokers_global_keyprefix(redis_url, sqlite_store):
    app = client_app(redis_url, broker_transport_options={"global_keyprefix": "app1:"})
    app.send_task("sample.add", args=[1, 1], queue="pq")
    app.send_task("sample.add", args=[1, 1], queue="pq", priority=6)
    app.close()
    client = redis.Redis.from_url(redis_url)
    assert client.llen("app1:pq") == 1 and client.llen("pq") == 0
    result = CliRunner().invoke(cli, ["purge", "pq", "--force", "--yes", "--json", "--db", sqlite_store,
                                      "--broker", redis_url], env={"TASKMON_BROKER_GLOBAL_KEYPREFIX": "app1:"})
    assert json.loads(ok(result)) == [{"queue": "pq", "messages": 2, "by_priority": {"0": 1, "6": 1}, "exists": None}]
    assert client.exists("app1:pq", "app1:pq\x06\x166") == 0


# -- ping ---------------------------------------------------------------------------------------

def test_ping_with_a_worker_exits_0_with_the_round_trip(redis_url, worker):
    out = ok(taskmon("ping", "--task", "sample.ping", "--queue", "celery", "--timeout", "15", "--broker", redis_url,
                     backend=backend_of(redis_url)))
    assert "broker:  " in out and f"({worker.hostname})" in out and "SUCCESS, round trip" in out
    assert out.strip().endswith("ok")


def test_ping_with_no_worker_exits_1_with_the_reason(redis_url):
    result = taskmon("ping", "--timeout", "2", "--broker", redis_url, backend=backend_of(redis_url))
    assert result.exit_code == 1 and "FAILED: no worker answered ping" in result.output
    data = json.loads(taskmon("ping", "--json", "--timeout", "2", "--broker", redis_url).output)
    assert data["ok"] is False and data["broker_ok"] is True and data["workers"] == []


# -- worker control -----------------------------------------------------------------------------

def test_pool_grow_shows_in_inspect_stats_and_rate_limit_is_applied(redis_url, worker):
    def processes():
        stats = json.loads(ok(taskmon("inspect", "stats", "--json", "--broker", redis_url)))
        return len(stats["replies"][worker.hostname]["pool"]["processes"])

    before = processes()
    out = ok(taskmon("worker", "pool-grow", "2", "--worker", worker.hostname, "--broker", redis_url))
    assert out.strip() == f"{worker.hostname}: pool will grow"
    deadline = time.monotonic() + 10
    while processes() != before + 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert processes() == before + 2
    declined = taskmon("worker", "rate-limit", "sample.add", "6/m", "--broker", redis_url, input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    data = json.loads(ok(taskmon("worker", "rate-limit", "sample.add", "6/m", "--yes", "--json", "--broker", redis_url)))
    assert "new rate limit set successfully" in data["replies"][worker.hostname]["ok"]
    registered = json.loads(ok(taskmon("inspect", "registered", "--json", "--broker", redis_url)))
    assert "sample.add [rate_limit=6/m]" in registered["replies"][worker.hostname]


def test_add_consumer_then_active_queues_lists_it(redis_url, worker):
    ok(taskmon("worker", "add-consumer", "extra_q", "--yes", "--broker", redis_url))
    data = json.loads(ok(taskmon("inspect", "active-queues", "--json", "--broker", redis_url)))
    assert "extra_q" in {q["name"] for q in data["replies"][worker.hostname]}


def test_a_worker_error_reply_exits_1(redis_url, worker):
    # pool_restart is refused unless the worker enabled worker_pool_restarts: the reply says so.
    result = taskmon("worker", "pool-restart", "--yes", "--broker", redis_url)
    assert result.exit_code == 1 and f"{worker.hostname}: error:" in result.output


def test_pool_restart_replaces_the_pool_of_a_worker_that_enabled_it_and_is_refused_by_one_that_did_not(
        redis_url, sqlite_store):
    # taskmon's own tasks app, once with worker_pool_restarts on and once with the default (off)
    env = {"TASKMON_BROKER_URL": redis_url, "TASKMON_DATABASE_URL": sqlite_store}
    with TasksWorkers(redis_url, env) as (enabled, default):
        def pids(host):
            stats = json.loads(ok(taskmon("inspect", "stats", "--worker", host, "--json", "--broker", redis_url)))
            return set(stats["replies"][host]["pool"]["processes"])

        before = pids(enabled.hostname)
        result = taskmon("worker", "pool-restart", "--module", "tasks.billing", "--reload", "--yes", "--json",
                         "--broker", redis_url)
        assert result.exit_code == 1  # the default worker refused
        replies = json.loads(result.stdout)["replies"]
        assert replies[enabled.hostname] == {"ok": "reload started"}
        assert "Pool restarts not enabled" in replies[default.hostname]["error"]
        # An idle prefork process sees the restart only when it next takes a task: give them some.
        app = client_app(redis_url)

        def replaced() -> bool:
            for _ in range(4):
                app.send_task("maintenance.health_check", queue="maintenance")
            now = pids(enabled.hostname)
            return len(now) == len(before) and not now & before

        try:
            until(replaced, f"new pool processes in {enabled.hostname} (before: {sorted(before)})", timeout=30)
        finally:
            app.close()
        out = ok(taskmon("worker", "pool-restart", "--worker", enabled.hostname, "--broker", redis_url))
        assert out.strip() == f"{enabled.hostname}: reload started"


# -- schedule run / status ----------------------------------------------------------------------

def test_schedule_run_sends_the_entry_and_status_follows_beat(redis_url, sqlite_store, start_beat, start_worker):
    env = {"TASKMON_DATABASE_URL": sqlite_store, "TASKMON_BROKER_URL": redis_url, "TASKMON_SCHEDULE_POLL_INTERVAL": "1"}
    stopped = taskmon("schedule", "status", "--db", sqlite_store, "--broker", redis_url)
    assert stopped.exit_code == 1 and "beat has not ticked" in stopped.output
    beat = start_beat("tasks", env=env, ready=b"schedule loaded")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status = taskmon("schedule", "status", "--json", "--db", sqlite_store, "--broker", redis_url)
        if status.exit_code == 0:
            break
        time.sleep(0.3)
    data = json.loads(status.output)
    assert data["alive"] is True and data["last_tick"]["pid"] == beat.proc.pid
    assert "cleanup-expired-results" in {e["name"] for e in data["entries"]}
    beat.stop()
    # the tasks app's worker on its own queue runs the entry sent by hand
    start_worker(redis_url, app="tasks", queues="low_priority", concurrency=1, env=env)
    with running_daemon(redis_url, sqlite_store) as daemon:
        out = ok(taskmon("schedule", "run", "cleanup-expired-results", "--db", sqlite_store, "--broker", redis_url))
        task_id = out.strip().rsplit(" ", 1)[1]
        row = wait_for_runs(daemon.engine, [task_id], states={"SUCCESS"})[task_id]
    assert row["name"] == "cleanup.cleanup_expired_results" and row["queue"] == "low_priority"
    unknown = taskmon("schedule", "run", "no-such-entry", "--db", sqlite_store, "--broker", redis_url)
    assert unknown.exit_code == 2 and "no schedule entry named 'no-such-entry'" in unknown.output


def test_on_rabbitmq_send_wait_inspect_control_ping_and_purge_work(amqp_url, redis_url, sqlite_store, start_worker):
    backend = backend_of(redis_url)
    worker = start_worker(amqp_url, queues="celery", env={"SAMPLE_RESULT_BACKEND": backend})
    out = ok(taskmon("send", "sample.add", "--args", "[5, 6]", "--wait", "--timeout", "15", "--broker", amqp_url,
                     backend=backend))
    assert "result: 11" in out
    queues = json.loads(ok(taskmon("inspect", "active-queues", "--json", "--broker", amqp_url)))
    assert [q["name"] for q in queues["replies"][worker.hostname]] == ["celery"]
    assert ok(taskmon("ping", "--task", "sample.ping", "--queue", "celery", "--timeout", "15", "--broker", amqp_url,
                      backend=backend)).strip().endswith("ok")
    app = client_app(amqp_url)
    long_id = app.send_task("sample.sleep", args=[30], queue="celery").id
    until(lambda: long_id in ok(taskmon("inspect", "active", "--broker", amqp_url)), f"{long_id} active on RabbitMQ")
    active = json.loads(ok(taskmon("inspect", "active", "--json", "--broker", amqp_url)))
    assert [(t["id"], t["name"]) for t in active["replies"][worker.hostname]] == [(long_id, "sample.sleep")]
    limited = json.loads(ok(taskmon("worker", "rate-limit", "sample.add", "8/m", "--yes", "--json",
                                    "--broker", amqp_url)))
    assert "new rate limit set successfully" in limited["replies"][worker.hostname]["ok"]
    registered = json.loads(ok(taskmon("inspect", "registered", "--json", "--broker", amqp_url)))
    assert "sample.add [rate_limit=8/m]" in registered["replies"][worker.hostname]
    app.control.revoke(long_id, terminate=True)
    app.close()
    app = client_app(amqp_url)
    app.send_task("sample.add", args=[1, 1], queue="amqp_doomed")
    app.close()
    purged = json.loads(ok(taskmon("purge", "amqp_doomed", "--force", "--yes", "--json", "--db", sqlite_store,
                                   "--broker", amqp_url)))
    assert purged == [{"queue": "amqp_doomed", "messages": 1, "by_priority": None, "exists": True}]
