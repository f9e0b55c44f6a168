"""A real worker on the tests' own Redis: every kind of task ends in task_runs with the right fields."""
import time

import pytest

from tests.daemon_helpers import running_daemon, wait_for_runs

FINAL = {"SUCCESS", "FAILURE", "REVOKED", "REJECTED", "TIMEOUT"}


@pytest.fixture
def sample_app(redis_url, celery_client):
    return celery_client(redis_url)


def test_pubsub_ingests_success_failure_retry_revoke_and_time_limit(redis_url, sqlite_url, start_worker, sample_app):
    with running_daemon(redis_url, sqlite_url) as daemon:
        worker = start_worker(redis_url)
        ok = sample_app.send_task("sample.add", (2, 3), queue="celery")
        bad = sample_app.send_task("sample.fail", kwargs={"message": "broken"})
        flaky = sample_app.send_task("sample.flaky", kwargs={"fail_times": 2})
        revoked = sample_app.send_task("sample.add", (1, 1), countdown=4)
        limited = sample_app.send_task("sample.limited", (5,))
        secret = sample_app.send_task("sample.login", ("alice",), kwargs={"password": "hunter2", "token": "t0k"})
        time.sleep(1.0)
        sample_app.control.revoke(revoked.id)
        ids = [ok.id, bad.id, flaky.id, limited.id, secret.id]
        rows = wait_for_runs(daemon.engine, ids, FINAL, timeout=40)
        rows.update(wait_for_runs(daemon.engine, [revoked.id], {"REVOKED"}, timeout=40))

    assert rows[ok.id]["state"] == "SUCCESS" and rows[ok.id]["result"] == "5"
    assert rows[ok.id]["name"] == "sample.add" and rows[ok.id]["args"] == "(2, 3)"
    assert rows[ok.id]["worker"] == worker.hostname and rows[ok.id]["queue"] == "celery"
    assert rows[ok.id]["runtime"] > 0 and rows[ok.id]["queue_wait"] is not None
    # task-sent is stamped after the publish returns, so a quick worker may receive (even start) it first.
    assert rows[ok.id]["sent_at"] is not None
    assert rows[ok.id]["received_at"] <= rows[ok.id]["started_at"] <= rows[ok.id]["finished_at"]

    assert rows[bad.id]["state"] == "FAILURE" and rows[bad.id]["exception_type"] == "ValueError"
    assert "broken" in rows[bad.id]["exception"] and "Traceback" in rows[bad.id]["traceback"]

    assert rows[flaky.id]["state"] == "SUCCESS" and rows[flaky.id]["retries"] == 2
    assert rows[flaky.id]["result"] == "'ok after 2 retries'" and rows[flaky.id]["exception"] is None

    assert rows[limited.id]["state"] == "TIMEOUT"  # a failure with a time-limit error
    assert rows[limited.id]["exception_type"] in {"SoftTimeLimitExceeded", "TimeLimitExceeded"}

    assert rows[revoked.id]["state"] == "REVOKED"

    assert "hunter2" not in rows[secret.id]["kwargs"] and "t0k" not in rows[secret.id]["kwargs"]
    assert "'alice'" in rows[secret.id]["args"] and "'password': '***'" in rows[secret.id]["kwargs"]
    assert rows[secret.id]["state"] == "SUCCESS"


def test_daemon_turns_on_events_of_a_worker_started_without_them(redis_url, sqlite_url, start_worker, celery_client):
    from monitor.daemon import Daemon
    from tasks.settings import Settings
    from storage.db import make_engine, upgrade

    quiet = celery_client(redis_url, task_send_sent_event=False)
    start_worker(redis_url, app="tests.apps.quiet", events=False)
    engine = make_engine(sqlite_url)
    upgrade(engine)
    daemon = Daemon(Settings(broker_url=redis_url, database_url=sqlite_url, event_sources=("pubsub",),
                             enable_events=True, flush_interval=0.05), engine)
    daemon.start()
    try:
        # Events on: the worker's heartbeats start to arrive.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not daemon.counters().get("rows_written"):
            time.sleep(0.1)
        result = quiet.send_task("quiet.add", (1, 2))
        rows = wait_for_runs(engine, [result.id], {"SUCCESS"}, timeout=20)
    finally:
        daemon.shutdown()
    assert rows[result.id]["state"] == "SUCCESS" and rows[result.id]["name"] == "quiet.add"
