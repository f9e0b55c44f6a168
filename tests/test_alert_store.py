"""The alert job over stored rows on SQLite and PostgreSQL: scripted sweep results and ``now``."""
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from tasks.alert_rules import parse_rules
from monitor.alerts.runner import AlertRunner
from monitor.detectors.sweep import SweepResult
from monitor.redis_server import free_port
from tasks.settings import Settings
from monitor.alerts.conditions import FAILED_STATES, FINISHED_STATES
from storage import alerts as store
from storage import rollup_stats
from storage.runs import upsert_runs, upsert_workers
from storage.schedules import add_schedule
from storage.schema import alert_groups, periodic_tasks
from tasks.alerts import deliver_alert
from tasks.cron import definition
from tasks.mail import MailError

NOW = datetime.now(timezone.utc).replace(microsecond=0)
ONLY = lambda *names: parse_rules({n: {"enabled": False} for n in  # noqa: E731
                                   ("failed", "timeout", "lost", "stuck", "worker_offline", "queue_depth",
                                    "failure_rate", "missed_run") if n not in names})


def at(s):
    return NOW + timedelta(seconds=s)


def runner(engine, redis_url, rules, **kw):
    settings = Settings(broker_url=redis_url, alert_recipients=("ops@example.com",), alerts=rules,
                        alert_digest_interval=60, **kw)
    return AlertRunner(engine, settings)


def failed_run(task_id, t):
    return {"task_id": task_id, "name": "billing.charge", "state": "FAILURE", "state_at": at(t), "seen_at": at(t),
            "finished_at": at(t), "exception": "ValueError('card declined')", "exception_type": "ValueError",
            "traceback": "Traceback (most recent call last):\nValueError: card declined", "worker": "w1@host",
            "args": "(42,)", "kwargs": "{'password': 'hunter2'}", "runtime": 0.5, "updated_at": at(t)}


def letters(*ids, t=0):
    return SweepResult(at(t), dead_letters=[{"task_id": i, "name": "billing.charge", "reason": "failure",
                                             "exception_type": "ValueError", "exception": "ValueError('card declined')",
                                             "dead_at": at(t)} for i in ids])


def test_a_failure_records_one_pending_alert_then_one_digest_and_the_group_state(engine, redis_url):
    with engine.begin() as conn:
        upsert_runs(conn, [failed_run(f"t{i}", 0) for i in range(3)])
    r = runner(engine, redis_url, ONLY("failed"))
    try:
        first = r.evaluate(at(1), letters("t0", "t1", "t2"))
        assert r.evaluate(at(30), None) == []
        digest = r.evaluate(at(61), None)
    finally:
        r.close()
    with engine.connect() as conn:
        rows = store.list_alerts(conn)
        group = conn.execute(select(alert_groups)).mappings().one()
    assert [a["id"] for a in rows] == digest + first
    assert [(a["kind"], a["occurrences"], a["total_count"], a["status"]) for a in rows] == [
        ("digest", 2, 3, "pending"), ("fire", 1, 1, "pending")]
    assert rows[1]["subject"] == "[taskmon] billing.charge failed: ValueError"
    assert rows[0]["subject"] == "[taskmon] digest: billing.charge failed: ValueError (2 more, 3 in all)"
    assert rows[1]["recipients"] == "ops@example.com" and rows[1]["task_id"] == "t0"
    assert group["status"] == "open" and group["pending_count"] == 0 and group["total_count"] == 3


def test_a_failure_stored_before_its_task_name_waits_for_the_name_and_is_mailed_under_it(engine, redis_url):
    from monitor.detectors.sweep import Sweeper

    with engine.begin() as conn:  # task-failed carries no name; its task-received comes later
        upsert_runs(conn, [{**failed_run("t0", 0), "name": None}, {**failed_run("t1", 0), "name": None}])
    r = runner(engine, redis_url, ONLY("failed"))
    sweeper = Sweeper(engine, r.settings)
    try:
        assert r.evaluate(at(1), sweeper.sweep(at(1), at(-60))) == []
        with engine.begin() as conn:
            upsert_runs(conn, [{"task_id": "t0", "name": "billing.charge", "state": "RECEIVED", "state_at": at(-1),
                                "seen_at": at(-1), "received_at": at(-1), "updated_at": at(5)}])
        named = r.evaluate(at(6), sweeper.sweep(at(6), at(-60)))
        assert r.evaluate(at(20), sweeper.sweep(at(20), at(-60))) == []
        unnamed = r.evaluate(at(31), sweeper.sweep(at(31), at(-60)))  # t1's name never came
        assert r.evaluate(at(40), sweeper.sweep(at(40), at(-60))) == []
    finally:
        r.close()
    with engine.connect() as conn:
        rows = {a["id"]: a for a in store.list_alerts(conn)}
    assert len(named) == len(unnamed) == 1 and len(rows) == 2
    assert (rows[named[0]]["subject"], rows[named[0]]["task_id"]) == ("[taskmon] billing.charge failed: ValueError", "t0")
    assert (rows[unnamed[0]]["subject"], rows[unnamed[0]]["task_id"]) == ("[taskmon] a task failed: ValueError", "t1")


def test_worker_offline_and_missed_run_are_read_from_storage_and_resolve(engine, redis_url):
    with engine.begin() as conn:
        upsert_workers(conn, [{"hostname": "w1@host", "status": "lost", "last_heartbeat": at(-10), "freq": 2.0,
                               "first_seen": at(-100), "updated_at": at(-1)}])
        add_schedule(conn, definition("nightly", "reports.generate_daily_report", every=60), at(-600))
        conn.execute(periodic_tasks.update().where(periodic_tasks.c.name == "nightly").values(last_run_at=at(-300)))
    r = runner(engine, redis_url, parse_rules({"missed_run": {"grace_seconds": 30}, "queue_depth": {"enabled": False}}))
    try:
        r.evaluate(at(0), None)
        with engine.begin() as conn:
            upsert_workers(conn, [{"hostname": "w1@host", "status": "online", "last_heartbeat": at(1), "freq": 2.0,
                                   "first_seen": at(-100), "updated_at": at(1)}])
        r.evaluate(at(2), None)
    finally:
        r.close()
    with engine.connect() as conn:
        rows = store.list_alerts(conn)
    kinds = sorted((a["rule"], a["kind"], a["target"]) for a in rows)
    assert kinds == [("missed_run", "fire", "nightly"), ("worker_offline", "fire", "w1@host"),
                     ("worker_offline", "resolved", "w1@host")]


def test_delivery_stamps_the_attempt_its_claim_failure_retry_and_sending_with_the_given_now(
        engine, redis_url, smtp_server):
    with engine.begin() as conn:
        upsert_runs(conn, [failed_run("t0", 0)])
    r = runner(engine, redis_url, ONLY("failed"))
    try:
        (alert_id,) = r.evaluate(at(1), letters("t0"))
    finally:
        r.close()
    tried, sent_at = at(86_400), at(2 * 86_400)  # a day apart, and far from the wall clock
    down = Settings(smtp_host="127.0.0.1", smtp_port=free_port(), alert_resend_after=100)
    with pytest.raises(MailError):
        deliver_alert(engine, down, alert_id, retry_in=5, now=tried)
    with engine.connect() as conn:
        failed = store.get_alert(conn, alert_id)
    assert (failed["updated_at"], failed["next_attempt_at"]) == (tried, tried + timedelta(seconds=105))
    up = Settings(smtp_host="127.0.0.1", smtp_port=smtp_server.port)
    assert deliver_alert(engine, up, alert_id, now=sent_at)["sent"]
    with engine.connect() as conn:
        sent = store.get_alert(conn, alert_id)
    assert (sent["sent_at"], sent["updated_at"]) == (sent_at, sent_at)

def test_no_recipients_is_recorded_as_failed_and_nothing_is_sent(engine, redis_url):
    r = AlertRunner(engine, Settings(broker_url=redis_url, alerts=ONLY("failed")))
    try:
        r.evaluate(at(1), letters("x"))
    finally:
        r.close()
    with engine.connect() as conn:
        (alert,) = store.list_alerts(conn)
    assert alert["status"] == "failed" and alert["last_error"].startswith("no recipients")


def test_delivery_is_idempotent_per_alert_and_a_failed_send_is_kept_for_a_retry(engine, redis_url, smtp_server):
    with engine.begin() as conn:
        upsert_runs(conn, [failed_run("t0", 0)])
    r = runner(engine, redis_url, ONLY("failed"))
    try:
        (alert_id,) = r.evaluate(at(1), letters("t0"))
    finally:
        r.close()
    down = Settings(smtp_host="127.0.0.1", smtp_port=free_port(), alert_resend_after=100)
    with pytest.raises(MailError, match="cannot send mail via 127.0.0.1"):
        deliver_alert(engine, down, alert_id, retry_in=5)
    with engine.begin() as conn:
        failed = store.get_alert(conn, alert_id)
        assert failed["status"] == "failed" and failed["attempts"] == 1 and "refused" in failed["last_error"]
        assert store.due_for_resend(conn, failed["updated_at"] + timedelta(seconds=104)) == []
        assert store.due_for_resend(conn, failed["updated_at"] + timedelta(seconds=106)) == [alert_id]
    up = Settings(smtp_host="127.0.0.1", smtp_port=smtp_server.port)
    assert deliver_alert(engine, up, alert_id) == {"id": alert_id, "sent": True}
    assert deliver_alert(engine, up, alert_id) == {"id": alert_id, "sent": False}
    assert len(smtp_server.messages) == 1
    msg = smtp_server.messages[0]["message"]
    assert msg["Subject"] == "[taskmon] billing.charge failed: ValueError"
    assert "hunter2" not in msg.as_string()
    with engine.connect() as conn:
        sent = store.get_alert(conn, alert_id)
    assert sent["status"] == "sent" and sent["attempts"] == 2 and sent["sent_at"] is not None


def test_the_failure_rate_window_counts_the_ended_runs_first_seen_in_it_by_name(engine):
    def run(task_id, state, seen, name="report.build"):
        return {"task_id": task_id, "name": name, "state": state, "seen_at": at(seen) + timedelta(microseconds=250_000),
                "updated_at": at(0)}

    with engine.begin() as conn:
        upsert_runs(conn, [
            run("ok-in", "SUCCESS", -10), run("fail-in", "FAILURE", -200), run("lost-in", "LOST", -299),
            run("timeout-in", "TIMEOUT", -120), run("old", "FAILURE", -301),  # seen 300.75 s ago: before the window
            run("running", "STARTED", -60), run("retrying", "RETRY", -60),  # not ended: not counted
            run("nameless", "FAILURE", -10, name=None), run("other", "SUCCESS", -30, name="mail.send"),
        ])
        counts = rollup_stats.finished_counts(conn, at(-300), at(0), FINISHED_STATES, FAILED_STATES)
    assert counts == {"report.build": {"total": 4, "failed": 3}, "mail.send": {"total": 1, "failed": 0}}
