"""Detection with real workers on the tests' own Redis: lost, timeout, stuck, replay, and no false alarms."""
import re
import time
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery
from click.testing import CliRunner
from sqlalchemy import select

from cli import cli
from storage.deadletters import get_dead_letter
from storage.schema import dead_letters, task_runs, workers
from tests.daemon_helpers import running_daemon, wait_for_runs

FAST = {"detect_interval": 0.25}  # sweeps four times a second


@pytest.fixture
def client(redis_url):
    """A plain Celery client of the sample app's tasks, sending task-sent events like the app does."""
    app = Celery("detect-client", broker=redis_url, set_as_current=False)
    app.conf.update(task_send_sent_event=True, broker_connection_retry_on_startup=True)
    yield app
    app.close()


def wait_for(engine, query, timeout=20.0):
    """Poll until ``query`` (a function of a connection) returns something truthy; return it."""
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            found = query(conn)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def letter_of(engine, task_id, state="open", timeout=20.0):
    return wait_for(engine, lambda c: (d := get_dead_letter(c, task_id)) and d["state"] == state and d, timeout)


def taskmon(*args):
    return CliRunner().invoke(cli, list(args))


def test_a_worker_killed_with_9_mid_task_makes_it_lost_within_3_heartbeats_until_redelivered(
        redis_url, sqlite_url, start_worker, client):
    with running_daemon(redis_url, sqlite_url, **FAST) as daemon:
        doomed = start_worker(redis_url)
        task = client.send_task("sample.sleep", (3,))
        assert wait_for_runs(daemon.engine, [task.id], {"STARTED"})[task.id]["state"] == "STARTED"
        killed_at = datetime.now(timezone.utc)
        doomed.kill()  # SIGKILL: no worker-offline, only silence

        letter = letter_of(daemon.engine, task.id)
        with daemon.engine.connect() as conn:
            row = conn.execute(select(task_runs).where(task_runs.c.task_id == task.id)).mappings().one()
            worker = conn.execute(select(workers).where(workers.c.hostname == doomed.hostname)).mappings().one()
        assert row["state"] == "LOST" and row["exception_type"] == "WorkerLostError"
        assert doomed.hostname in row["exception"] and worker["status"] == "lost"
        assert letter["reason"] == "lost" and letter["worker"] == doomed.hostname
        assert letter["created_at"] - killed_at <= timedelta(seconds=3 * worker["freq"])

        # acks_late: a new worker takes the unacknowledged task back; its events override LOST
        rescuer = start_worker(redis_url, env={"SAMPLE_VISIBILITY_TIMEOUT": "1"})
        row = wait_for_runs(daemon.engine, [task.id], {"SUCCESS"}, timeout=30)[task.id]
        assert row["state"] == "SUCCESS" and row["worker"] == rescuer.hostname and row["redelivered"] is True
        resolved = letter_of(daemon.engine, task.id, state="resolved")
        assert resolved and resolved["resolution"].startswith("recovered")


def test_tasks_over_their_time_limit_are_timeouts_and_revoke_terminate_stops_one(
        redis_url, sqlite_url, start_worker, client):
    with running_daemon(redis_url, sqlite_url, timeouts=(("sample.sleep", 1.0),), **FAST) as daemon:
        start_worker(redis_url)
        killed = client.send_task("sample.limited", (5,))  # celery's own soft limit, 0.5 s
        hung = client.send_task("sample.sleep", (60,))  # taskmon's limit for sample.sleep, 1 s
        rows = wait_for_runs(daemon.engine, [killed.id, hung.id], {"TIMEOUT"})
        assert rows[killed.id]["state"] == "TIMEOUT" and rows[killed.id]["exception_type"] == "SoftTimeLimitExceeded"
        assert rows[hung.id]["state"] == "TIMEOUT" and rows[hung.id]["exception_type"] == "TimeLimitExceeded"
        assert "1s after it started" in rows[hung.id]["exception"]
        assert letter_of(daemon.engine, killed.id)["reason"] == letter_of(daemon.engine, hung.id)["reason"] == "timeout"

        result = taskmon("revoke", hung.id, "--terminate", "--broker", redis_url, "--db", sqlite_url)
        assert result.exit_code == 0 and "revoke --terminate (SIGTERM) sent" in result.output, result.output
        assert wait_for_runs(daemon.engine, [hung.id], {"REVOKED"})[hung.id]["state"] == "REVOKED"


def test_a_task_queued_where_no_worker_listens_is_flagged_stuck(redis_url, sqlite_url, client):
    with running_daemon(redis_url, sqlite_url, stuck_after=1.0, **FAST) as daemon:
        task = client.send_task("sample.add", (1, 2), queue="nobody-listens")
        row = wait_for(daemon.engine, lambda c: c.execute(select(task_runs).where(
            task_runs.c.task_id == task.id, task_runs.c.stuck_at.is_not(None))).mappings().first())
    assert row and row["state"] == "PENDING" and row["queue"] == "nobody-listens"
    assert row["stuck_at"] == row["sent_at"] + timedelta(seconds=1)


def test_replaying_a_dead_task_after_its_cause_was_fixed_links_both_runs(
        redis_url, db_url, start_worker, client, tmp_path):
    flag = tmp_path / "dependency"
    flag.write_text("broken")
    with running_daemon(redis_url, db_url, **FAST) as daemon:
        start_worker(redis_url)
        dead = client.send_task("sample.fragile", (str(flag), 21))
        cut = client.send_task("sample.fail", kwargs={"message": "x" * 3000})  # argsrepr cut at 1024
        assert letter_of(daemon.engine, dead.id)["exception_type"] == "RuntimeError"
        assert letter_of(daemon.engine, cut.id)["reason"] == "failure"

        flag.write_text("fixed")
        result = taskmon("replay", dead.id, "--yes", "--broker", redis_url, "--db", db_url)
        assert result.exit_code == 0, result.output
        new_id = re.search(r"replayed \S+ as (\S+) \(sample.fragile, queue celery\)", result.output).group(1)
        rows = wait_for_runs(daemon.engine, [dead.id, new_id], {"SUCCESS", "FAILURE"})
        assert rows[new_id]["state"] == "SUCCESS" and rows[new_id]["result"] == "42"
        assert rows[new_id]["replay_of"] == dead.id and rows[new_id]["args"] == rows[dead.id]["args"]
        assert rows[dead.id]["state"] == "FAILURE"
        letter = letter_of(daemon.engine, dead.id, state="replayed")
        assert letter["replayed_as"] == new_id

        refused = taskmon("replay", cut.id, "--yes", "--broker", redis_url, "--db", db_url)
        assert refused.exit_code == 1 and refused.output.count("\n") == 1, refused.output
        assert "truncated argsrepr" in refused.output and "install(app)" in refused.output


def test_a_healthy_run_with_retries_and_long_tasks_raises_nothing(redis_url, sqlite_url, start_worker, client):
    settings = dict(stuck_after=15.0, timeouts=(("sample.sleep", 6.0),), **FAST)
    with running_daemon(redis_url, sqlite_url, **settings) as daemon:
        start_worker(redis_url, concurrency=3)
        sent = [client.send_task("sample.flaky", kwargs={"fail_times": 2}) for _ in range(2)]
        sent += [client.send_task("sample.sleep", (2.5,)) for _ in range(2)]  # long, but within 6 s
        sent += [client.send_task("sample.add", (i, i)) for i in range(6)]
        rows = wait_for_runs(daemon.engine, [r.id for r in sent], {"SUCCESS"}, timeout=40)
        sweeps = daemon.detector.counters.get("detect.sweeps")
        while daemon.detector.counters.get("detect.sweeps") < sweeps + 4:  # a few sweeps after the last task
            time.sleep(0.1)
        with daemon.engine.connect() as conn:
            letters = conn.execute(select(dead_letters)).all()
            states = conn.execute(select(workers.c.status)).scalars().all()
        counters = daemon.detector.counters.snapshot()
    assert {r["state"] for r in rows.values()} == {"SUCCESS"} and len(rows) == 10
    assert [rows[r.id]["retries"] for r in sent[:2]] == [2, 2]
    assert not any(r["stuck_at"] or r["redelivered"] for r in rows.values())
    assert letters == [] and states == ["online"]
    assert not {k for k in counters if k != "detect.sweeps"}, counters
