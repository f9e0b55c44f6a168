"""The service fixtures themselves: real Redis that can go away, real workers, real SMTP, RabbitMQ."""
import smtplib
import time
from datetime import datetime, timezone
from email.message import EmailMessage

import pytest
import redis
from kombu import Connection

from storage.db import make_engine, upgrade
from storage.runs import upsert_runs
from tests.daemon_helpers import wait_for_runs


def test_fresh_redis_can_be_killed_and_restarted(fresh_redis):
    client = redis.Redis(port=fresh_redis.port)
    assert client.ping()
    fresh_redis.kill()
    assert not fresh_redis.ping()
    fresh_redis.start()
    assert redis.Redis(port=fresh_redis.port).ping()


def test_worker_runs_tasks_on_test_redis(redis_url, start_worker, celery_client):
    worker = start_worker(redis_url)
    app = celery_client(redis_url)
    replies = app.control.ping(destination=[worker.hostname], timeout=5)
    assert replies and worker.hostname in replies[0]


def test_smtp_sink_receives_mail(smtp_server):
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = "hello", "a@example.com", "b@example.com"
    msg.set_content("body")
    with smtplib.SMTP("127.0.0.1", smtp_server.port) as smtp:
        smtp.send_message(msg)
    assert smtp_server.received.wait(5)
    assert smtp_server.messages[0]["message"]["Subject"] == "hello"


def test_rabbitmq_round_trip(amqp_url):
    with Connection(amqp_url) as conn:
        queue = conn.SimpleQueue("taskmon-fixture-check")
        queue.put({"n": 1})
        assert queue.get(timeout=5).payload == {"n": 1}
        queue.clear()
        queue.close()


def test_wait_for_runs_fails_on_timeout_naming_the_missing_runs_and_those_in_another_state(sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        upsert_runs(conn, [{"task_id": "done", "state": "SUCCESS", "seen_at": now, "updated_at": now},
                           {"task_id": "running", "state": "STARTED", "seen_at": now, "updated_at": now}])
    assert set(wait_for_runs(engine, ["done", "running"], timeout=0.2)) == {"done", "running"}
    with pytest.raises(AssertionError) as failed:
        wait_for_runs(engine, ["done", "running", "never-sent"], {"SUCCESS"}, timeout=0.2)
    assert str(failed.value) == ("after 0.2s waiting for 3 task runs in SUCCESS: not stored: never-sent; "
                                 "in another state: running (STARTED)")
    engine.dispose()
