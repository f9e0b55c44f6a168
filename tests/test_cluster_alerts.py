"""Alerts stay exactly-once when the leader is killed: a real worker, two daemons on PostgreSQL, real SMTP."""
import json

import pytest
from sqlalchemy import func, select

from storage import alerts as store
from storage.db import make_engine, upgrade
from storage.schema import alert_groups, task_runs
from tests.services import DaemonProcess
from tests.test_cluster import CLUSTER_ENV, leader_of, statuses, wait_until

pytestmark = pytest.mark.slow
OPS = "ops@example.com"
ONLY_FAILED = {rule: {"enabled": False} for rule in ("timeout", "lost", "stuck", "worker_offline", "queue_depth",
                                                     "failure_rate", "missed_run")}


def alerting_env(digest_interval: float) -> dict:
    return {**CLUSTER_ENV, "TASKMON_ALERT_RECIPIENTS": OPS, "TASKMON_ALERTS": json.dumps(ONLY_FAILED),
            "TASKMON_ALERT_DIGEST_INTERVAL": str(digest_interval)}


def two_daemons(broker_url, pg_url, tmp_path, env):
    engine = make_engine(pg_url)
    upgrade(engine)
    first = DaemonProcess(broker_url, pg_url, "--source", "stream", logdir=tmp_path, env=env)
    first.wait_log("taskmon daemon")
    first_id = wait_until(lambda: leader_of(engine), "the first daemon leads")
    second = DaemonProcess(broker_url, pg_url, "--source", "stream", logdir=tmp_path, env=env)
    second.wait_log("taskmon daemon")
    second_id = wait_until(lambda: next((i for i, r in statuses(engine).items() if i != first_id), None),
                           "the second daemon's heartbeat")
    return engine, (first, first_id), (second, second_id)


def start_alert_worker(start_worker, pg_url, broker_url, smtp_port):
    env = {"TASKMON_DATABASE_URL": pg_url, "TASKMON_BROKER_URL": broker_url, "TASKMON_SMTP_HOST": "127.0.0.1",
           "TASKMON_SMTP_PORT": str(smtp_port)}
    return start_worker(broker_url, app="tasks", queues="alerts", concurrency=1, env=env)


def sweeps(engine, daemon_id) -> int:
    return statuses(engine)[daemon_id]["counters"].get("alerts.evaluations", 0)


def failed_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(task_runs).where(task_runs.c.state == "FAILURE")).scalar()


def test_a_task_failing_for_good_while_the_leader_is_killed_is_mailed_exactly_once(
        fresh_redis, pg_url, start_worker, smtp_server, tmp_path, celery_client):
    from tasks.relay import install

    engine, (first, first_id), (second, second_id) = two_daemons(fresh_redis.url, pg_url, tmp_path,
                                                                 alerting_env(60))
    try:
        start_alert_worker(start_worker, pg_url, fresh_redis.url, smtp_server.port)
        start_worker(fresh_redis.url, app="tests.apps.relayed", pool="threads", concurrency=2)
        app = celery_client(fresh_redis.url)
        install(app)
        app.send_task("relayed.fail", ("card declined",))
        wait_until(lambda: failed_count(engine) == 1, "the failure stored")
        first.kill()  # the leader, while the failure's dead letter and alert are due
        wait_until(lambda: leader_of(engine) == second_id, "the second daemon leads", timeout=20)
        wait_until(lambda: len(smtp_server.messages) >= 1, "the alert e-mail")
        after = sweeps(engine, second_id)
        wait_until(lambda: sweeps(engine, second_id) >= after + 3, "three more evaluations by the new leader")
        with engine.connect() as conn:
            rows = store.list_alerts(conn)
        assert [(a["kind"], a["status"]) for a in rows] == [("fire", "sent")]
        assert len(smtp_server.messages) == 1
        assert str(smtp_server.messages[0]["message"]["Subject"]) == "[taskmon] relayed.fail failed: ValueError"
    finally:
        for d in (first, second):
            if d.proc.poll() is None:
                assert d.terminate() == 0


def test_a_thousand_identical_failures_across_a_leader_change_are_one_email_plus_digests(
        fresh_redis, pg_url, start_worker, smtp_server, tmp_path, celery_client):
    from tasks.relay import install

    # The digest interval outlasts the takeover of the killed daemon's pending entries (silent 15 s, claimed
    # within 5 s more): a shorter one closes the group quietly before its last failures arrive, and they fire anew.
    engine, (first, first_id), (second, second_id) = two_daemons(fresh_redis.url, pg_url, tmp_path,
                                                                 alerting_env(30))
    try:
        start_alert_worker(start_worker, pg_url, fresh_redis.url, smtp_server.port)
        start_worker(fresh_redis.url, app="tests.apps.relayed", pool="threads", concurrency=8)
        app = celery_client(fresh_redis.url)
        install(app)
        with app.producer_or_acquire() as producer:
            for i in range(1000):
                app.send_task("relayed.fail", ("card declined",), producer=producer)
        wait_until(lambda: len(smtp_server.messages) >= 1 and failed_count(engine) >= 300,
                   "the first e-mail and 300 failures stored", timeout=60)
        first.kill()
        wait_until(lambda: leader_of(engine) == second_id, "the second daemon leads", timeout=20)
        wait_until(lambda: failed_count(engine) == 1000, "all 1,000 failures stored", timeout=120)

        def counted_all():
            with engine.connect() as conn:
                g = conn.execute(select(alert_groups)).mappings().one()
            return g["total_count"] == 1000 and g["pending_count"] == 0
        wait_until(counted_all, "all 1,000 failures counted and mailed", timeout=120)
        wait_until(lambda: all(a["status"] == "sent" for a in _alerts(engine)), "every alert sent", timeout=30)
        rows = _alerts(engine)
        assert len(smtp_server.messages) == len(rows)
    finally:
        for d in (first, second):
            if d.proc.poll() is None:
                assert d.terminate() == 0
    kinds = [a["kind"] for a in sorted(rows, key=lambda a: a["id"])]
    assert kinds[0] == "fire" and set(kinds[1:]) == {"digest"}, kinds
    assert sum(a["occurrences"] for a in rows) == 1000  # each failure reported once: none repeated, none skipped
    assert len(rows) <= 4, "collapsed: one e-mail, then a digest at most every digest interval"


def _alerts(engine):
    with engine.connect() as conn:
        return store.list_alerts(conn)
