"""Alerts end to end: a real daemon, a real `tasks` worker on the alerts queue and a real SMTP server.

Intervals are shortened through settings; the tests wait for outcomes, never for time, and
check "no more e-mail" against the stored group state (nothing left to count or send) and
evaluations that ran after the last event.
"""
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
from sqlalchemy import select

from tasks.alert_rules import parse_rules
from storage import alerts as store
from storage.db import make_engine, upgrade
from storage.schedules import add_schedule
from storage.schema import alert_groups, periodic_tasks, workers
from tasks.cron import definition
from tests.daemon_helpers import running_daemon, wait_for_runs
from tests.eventgen import lifecycle, publish
from tests.services import Worker

pytestmark = pytest.mark.slow
OPS = "ops@example.com"


def wait_until(check, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout}s: {what}")


def alert_worker(start_worker, db_url, broker_url, smtp_port):
    """The tasks app's worker on the alerts queue, retrying failed sends after 0.5-1 s."""
    env = {"TASKMON_DATABASE_URL": db_url, "TASKMON_BROKER_URL": broker_url, "TASKMON_SMTP_HOST": "127.0.0.1",
           "TASKMON_SMTP_PORT": str(smtp_port), "TASKMON_ALERT_RETRY_DELAY": "0.5",
           "TASKMON_ALERT_RETRY_MAX_DELAY": "1", "TASKMON_TIMEZONE": "Asia/Shanghai"}
    return start_worker(broker_url, app="tasks", queues="alerts", concurrency=1, env=env)


def daemon(redis_url, db_url, rules=None, **settings):
    rules = {"queue_depth": {"enabled": False}, **(rules or {})}
    return running_daemon(redis_url, db_url, detect_interval=0.5, alert_recipients=(OPS,),
                          alerts=parse_rules(rules), **settings)


def subjects(smtp):
    """Subjects as sent (a long one comes back folded over two lines)."""
    return [" ".join(str(m["message"]["Subject"]).split()) for m in smtp.messages]


def settled(d, before: int, n: int = 2) -> bool:
    """``n`` more alert evaluations ran since the counter read ``before``."""
    return d.alerter.counters.get("alerts.evaluations") >= before + n


def body(msg) -> str:
    return msg.get_body(("plain",)).get_content()


def test_failures_for_good_mail_once_with_content_secrets_redacted_and_retries_that_succeed_mail_nothing(
        sqlite_url, redis_url, start_worker, smtp_server, celery_client):
    alert_worker(start_worker, sqlite_url, redis_url, smtp_server.port)
    sample = start_worker(redis_url)
    with daemon(redis_url, sqlite_url, timezone="Asia/Shanghai") as d:
        client = celery_client(redis_url)
        flaky = client.send_task("sample.flaky", kwargs={"fail_times": 2})
        ok = client.send_task("sample.add", args=(1, 2))
        fail = client.send_task("sample.fail", args=("card declined",))
        login = client.send_task("sample.login_fail", args=("bob",), kwargs={"password": "hunter2"})
        started = time.monotonic()
        wait_until(lambda: len(smtp_server.messages) >= 2, "two alert e-mails")
        assert time.monotonic() - started < 60
        wait_for_runs(d.engine, [flaky.id, ok.id], states={"SUCCESS"})
        before = d.alerter.counters.get("alerts.evaluations")
        wait_until(lambda: settled(d, before), "two evaluations after the retried task succeeded")
        with d.engine.connect() as conn:
            rows = store.list_alerts(conn)
    assert sorted(subjects(smtp_server)) == ["[taskmon] sample.fail failed: ValueError",
                                             "[taskmon] sample.login_fail failed: PermissionError"]
    assert sorted((a["task_id"], a["status"]) for a in rows) == sorted([(fail.id, "sent"), (login.id, "sent")])
    by_subject = {m["message"]["Subject"]: m for m in smtp_server.messages}
    mail = by_subject["[taskmon] sample.fail failed: ValueError"]
    assert mail["to"] == [OPS]
    text = body(mail["message"])
    for expected in ("Task:        sample.fail", f"Task id:     {fail.id}", "State:       FAILURE",
                     "Exception:   ValueError('card declined')", "Args:        ('card declined',)",
                     f"Worker:      {sample.hostname}", "Runtime:", "CST (Asia/Shanghai)", "Occurrences: 1",
                     f"taskmon show {fail.id}", "Traceback (last lines):", "ValueError: card declined"):
        assert expected in text, expected
    assert "<table>" in mail["message"].get_body(("html",)).get_content()
    for m in smtp_server.messages:
        assert "hunter2" not in m["message"].as_string()
    assert "'password': '***'" in body(by_subject["[taskmon] sample.login_fail failed: PermissionError"]["message"])


def test_a_thousand_identical_failures_within_a_minute_send_two_emails_the_second_a_digest_of_1000(
        sqlite_url, redis_url, start_worker, smtp_server):
    alert_worker(start_worker, sqlite_url, redis_url, smtp_server.port)
    with daemon(redis_url, sqlite_url, alert_digest_interval=3) as d:
        client = redis.Redis.from_url(redis_url)
        now = time.time()
        for i in range(1000):
            publish(client, lifecycle(f"bulk-{i:04d}", name="billing.charge", fail=True, t=now + i * 0.001))
        client.close()
        wait_until(lambda: len(smtp_server.messages) >= 2, "the first alert and the digest")

        def counted_all():
            with d.engine.connect() as conn:
                g = conn.execute(select(alert_groups)).mappings().one()
            return g["total_count"] == 1000 and g["pending_count"] == 0
        wait_until(counted_all, "all 1,000 failures counted and mailed")
    first, digest = subjects(smtp_server)
    assert first == "[taskmon] billing.charge failed: ValueError"
    assert digest == "[taskmon] digest: billing.charge failed: ValueError (999 more, 1,000 in all)"
    assert "1,000 in all" in body(smtp_server.messages[1]["message"])


def test_a_worker_killed_with_sigkill_mails_offline_once_and_resolved_once_when_it_is_back(
        sqlite_url, redis_url, start_worker, smtp_server, tmp_path):
    alert_worker(start_worker, sqlite_url, redis_url, smtp_server.port)
    victim = start_worker(redis_url)
    with daemon(redis_url, sqlite_url) as d:
        wait_until(lambda: _status(d, victim.hostname) == "online", "the victim's heartbeats stored")
        victim.kill()
        wait_until(lambda: len(smtp_server.messages) >= 1, "the worker-offline e-mail")
        back = Worker("tests.apps.sample", redis_url, logdir=tmp_path, hostname=victim.hostname).wait_ready()
        try:
            wait_until(lambda: len(smtp_server.messages) >= 2, "the resolved e-mail")
            before = d.alerter.counters.get("alerts.evaluations")
            wait_until(lambda: settled(d, before), "two evaluations after the worker came back")
            mails = subjects(smtp_server)  # before it stops again (a clean stop is "offline" too)
        finally:
            back.stop()
    assert mails == [f"[taskmon] worker {victim.hostname} offline",
                                     f"[taskmon] resolved: worker {victim.hostname} offline"]
    assert "heartbeats stopped" in body(smtp_server.messages[0]["message"])


def _status(d, hostname):
    with d.engine.connect() as conn:
        return conn.execute(select(workers.c.status).where(workers.c.hostname == hostname)).scalar()


def test_a_missed_periodic_run_mails_once(sqlite_url, redis_url, start_worker, smtp_server):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        add_schedule(conn, definition("sync-prices", "billing.check_pending_bills", every=60), now - timedelta(hours=1))
        conn.execute(periodic_tasks.update().where(periodic_tasks.c.name == "sync-prices")
                     .values(last_run_at=now - timedelta(minutes=5)))
    engine.dispose()
    alert_worker(start_worker, sqlite_url, redis_url, smtp_server.port)
    with daemon(redis_url, sqlite_url, rules={"missed_run": {"grace_seconds": 30}}) as d:
        wait_until(lambda: smtp_server.messages, "the missed-run e-mail")
        before = d.alerter.counters.get("alerts.evaluations")
        wait_until(lambda: settled(d, before, 3), "three more evaluations")
    assert subjects(smtp_server) == ["[taskmon] periodic task sync-prices missed its run"]
    assert "billing.check_pending_bills" in body(smtp_server.messages[0]["message"])


def test_smtp_down_then_up_the_alert_is_kept_and_arrives_after_it_is_back(
        sqlite_url, redis_url, start_worker, smtp_server):
    smtp_server.stop()
    alert_worker(start_worker, sqlite_url, redis_url, smtp_server.port)
    with daemon(redis_url, sqlite_url) as d:
        client = redis.Redis.from_url(redis_url)
        publish(client, lifecycle("down-1", name="billing.charge", fail=True, t=time.time()))
        client.close()

        def failed_attempt():
            with d.engine.connect() as conn:
                rows = store.list_alerts(conn)
            return rows and rows[0]["status"] == "failed" and rows[0]["attempts"] >= 1 and rows[0]
        failed = wait_until(failed_attempt, "a failed delivery attempt recorded")
        assert "Connection refused" in failed["last_error"]
        assert smtp_server.messages == []
        smtp_server.start()
        wait_until(lambda: smtp_server.messages, "the alert e-mail after SMTP is back")
        wait_until(lambda: _alert_status(d) == "sent", "the alert marked sent")
    assert subjects(smtp_server) == ["[taskmon] billing.charge failed: ValueError"]


def _alert_status(d):
    with d.engine.connect() as conn:
        return store.list_alerts(conn)[0]["status"]
