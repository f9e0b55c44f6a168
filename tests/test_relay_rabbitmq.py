"""install(app) on a RabbitMQ broker: the relay needs a Redis URL, so it warns once and stays out
of the way; the app publishes exactly as without it."""
import logging
import time

from tasks.relay import install


def add_numbers(x, y):
    return x + y


def test_install_on_a_rabbitmq_app_warns_once_and_delay_still_works(amqp_url, start_worker, celery_client, caplog,
                                                                   monkeypatch):
    monkeypatch.delenv("TASKMON_RELAY_URL", raising=False)
    app = celery_client(amqp_url)
    add = app.task(name="relayed.add")(add_numbers)
    with caplog.at_level(logging.WARNING, logger="tasks.relay"):
        relay = install(app)
    assert relay is None
    worker = start_worker(amqp_url, app="tests.apps.relayed", pool="threads", concurrency=2)

    ids = [add.delay(i, 1).id for i in range(20)]

    deadline = time.monotonic() + 30
    log = ""
    while time.monotonic() < deadline:
        log = worker.log.read_text(errors="replace")
        if all(f"[{task_id}] succeeded" in log for task_id in ids):
            break
        time.sleep(0.2)
    missing = [task_id for task_id in ids if f"[{task_id}] succeeded" not in log]
    assert not missing, f"{len(missing)} tasks did not run"
    warnings = [r for r in caplog.records if r.name.startswith("tasks.relay")]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "needs a Redis URL" in warnings[0].getMessage() and "TASKMON_RELAY_URL" in warnings[0].getMessage()
    assert "guest:guest" not in warnings[0].getMessage()  # the broker password is masked
    # The worker's own install(app) in tests/apps/relayed.py warned the same way and changed nothing.
    assert "taskmon relay not installed" in log and "Traceback" not in log


def test_install_on_a_rabbitmq_app_with_a_relay_url_relays(amqp_url, redis_url, celery_client):
    import redis

    from tasks.relay import DEFAULT_STREAM

    app = celery_client(amqp_url)
    add = app.task(name="relayed.add")(add_numbers)
    relay = install(app, url=redis_url)
    try:
        ids = [add.delay(i, 1).id for i in range(5)]
        assert relay.close()
        entries = redis.Redis.from_url(redis_url).xrange(DEFAULT_STREAM)
        relayed = [e for _, fields in entries if (e := fields.get(b"e"))]
        assert all(any(task_id.encode() in payload for payload in relayed) for task_id in ids)
    finally:
        relay.close()
