"""`taskmon queues`: live depths from a real Redis (priority sub-queues) and a real RabbitMQ."""
import json
import uuid

import redis
from click.testing import CliRunner
from kombu import Connection, Exchange, Queue

from cli import cli
from monitor.alerts.conditions import queue_conditions
from tasks.alert_rules import Rule
from monitor.broker.queues import queue_depths, redis_key
from tasks.settings import Settings
from tests.history_data import insert, now_utc, run

QUEUE_KEYS = ["name", "messages", "consumers", "by_priority", "exists"]


def publish(url, queue, priorities):
    """Real kombu messages, one per priority given (None: no priority)."""
    q = Queue(queue, Exchange(queue, type="direct"), routing_key=queue, max_priority=9)
    with Connection(url) as conn:
        producer = conn.Producer()
        for pri in priorities:
            kwargs = {"priority": pri} if pri is not None else {}
            producer.publish({"task": "sample.add"}, exchange=q.exchange, routing_key=queue, declare=[q], **kwargs)


def queues_cmd(db_url, broker, *args):
    return CliRunner().invoke(cli, ["queues", "--db", db_url, "--broker", broker, *args])


def test_redis_depth_counts_every_priority_sub_queue(engine, db_url, redis_url):
    insert(engine, [run("m1", "mail.send", "SUCCESS", now_utc(), runtime=1.0, queue="mail")])
    publish(redis_url, "prio", [0, 0, 0, 5, 5, 9])
    publish(redis_url, "celery", [None] * 4)
    client = redis.Redis.from_url(redis_url)
    assert client.llen("prio") == 3  # what `LLEN prio` (and tools that only read it) would report
    assert client.llen(redis_key("prio", 3)) == 2 and client.llen("prio\x06\x169") == 1

    result = queues_cmd(db_url, redis_url, "--queue", "prio", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["celery", "mail", "prio"]  # default, from the history, from --queue
    assert all(list(r) == QUEUE_KEYS for r in rows)
    assert rows[0]["messages"] == 4 and rows[0]["by_priority"] == {"0": 4}
    assert rows[1]["messages"] == 0 and rows[1]["by_priority"] == {}
    assert rows[2]["messages"] == 6 and rows[2]["by_priority"] == {"0": 3, "3": 2, "9": 1}

    table = queues_cmd(db_url, redis_url, "--queue", "prio")
    assert table.exit_code == 0, table.output
    lines = {line.split()[0]: line.split()[1:] for line in table.stdout.strip().splitlines()[2:]}
    assert lines["prio"] == ["6", "-", "0:3", "3:2", "9:1"] and lines["mail"] == ["0", "-", "-"]


def test_redis_key_that_is_not_a_list_is_skipped(redis_url):
    redis.Redis.from_url(redis_url).set("odd", "not a queue")
    assert queue_depths(Settings(broker_url=redis_url), ["odd"]) == [
        {"name": "odd", "messages": 0, "consumers": None, "by_priority": {}, "exists": None}]


def test_rabbitmq_depth_and_missing_queue(sqlite_store, amqp_url):
    name = f"taskmon-test-{uuid.uuid4().hex[:8]}"
    publish(amqp_url, name, [1, 2, None])
    try:
        result = queues_cmd(sqlite_store, amqp_url, "--queue", name, "--queue", f"{name}-absent", "--json")
        assert result.exit_code == 0, result.output
        rows = {r["name"]: r for r in json.loads(result.stdout)}
        assert rows[name] == {"name": name, "messages": 3, "consumers": 0, "by_priority": None, "exists": True}
        assert rows[f"{name}-absent"]["exists"] is False and rows[f"{name}-absent"]["messages"] is None
        assert "celery" in rows
        table = queues_cmd(sqlite_store, amqp_url, "--queue", f"{name}-absent")
        assert "no such queue" in table.stdout
        # The queue_depth alert rule reads the same depths: a queue that does not exist is not deep.
        depths = queue_depths(Settings(broker_url=amqp_url), [name, f"{name}-absent"])
        fired = queue_conditions(depths, Rule("queue_depth", threshold=2, for_seconds=0))
        assert [c.target for c in fired] == [name]
    finally:
        with Connection(amqp_url) as conn:
            Queue(name, Exchange(name, type="direct"), routing_key=name).bind(conn.default_channel).delete()


def one_line(result):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_unreachable_brokers_are_one_line_errors(sqlite_store):
    line = one_line(queues_cmd(sqlite_store, "redis://127.0.0.1:1/0"))
    assert "cannot reach the broker at redis://127.0.0.1:1/0" in line and "TASKMON_BROKER_URL" in line
    line = one_line(queues_cmd(sqlite_store, "amqp://guest:secret@127.0.0.1:1//"))
    assert "cannot reach the broker at amqp://guest:***@127.0.0.1:1//" in line


def test_a_broker_without_queue_depths_is_one_line_error(sqlite_store):
    assert "cannot read queue depths from a memory:// broker" in one_line(queues_cmd(sqlite_store, "memory://"))
