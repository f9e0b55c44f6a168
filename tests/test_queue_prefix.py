"""Under a Celery ``global_keyprefix`` every reader of queue depths sees the prefixed keys, on a real Redis."""
from __future__ import annotations

import json

import redis
from click.testing import CliRunner

from cli import cli
from monitor.alerts.conditions import queue_conditions
from monitor.alerts.runner import AlertRunner
from monitor.broker.queues import queue_depths
from monitor.queue_sampler import QueueSampler
from tasks.alert_rules import Rule
from tasks.settings import Settings
from tests.api_fixtures import role_tokens, start_api  # noqa: F401  (fixture)
from tests.history_data import now_utc
from tests.test_alert_store import ONLY
from tests.test_queue_depths import samples

PREFIX = "app1:"


def send_prefixed(celery_client, redis_url, n):
    """``n`` tasks on the default queue of an app whose Redis keys all carry PREFIX."""
    app = celery_client(redis_url, broker_transport_options={"global_keyprefix": PREFIX})
    for i in range(n):
        app.send_task("sample.add", (i, i))
    client = redis.Redis.from_url(redis_url)
    assert client.llen(PREFIX + "celery") == n and client.llen("celery") == 0  # only the prefixed key holds them


def depth_of(rows, name="celery"):
    return next(r["messages"] for r in rows if r["name"] == name)


def test_the_cli_reads_the_prefixed_queue(celery_client, redis_url, sqlite_store):
    send_prefixed(celery_client, redis_url, 3)
    result = CliRunner().invoke(cli, ["queues", "--json", "--db", sqlite_store, "--broker", redis_url],
                                env={"TASKMON_BROKER_GLOBAL_KEYPREFIX": PREFIX})
    assert result.exit_code == 0, result.output
    assert depth_of(json.loads(result.stdout)) == 3


def test_the_api_reads_the_prefixed_queue(celery_client, redis_url, sqlite_store, start_api):
    send_prefixed(celery_client, redis_url, 2)
    tokens = role_tokens(sqlite_store)
    server = start_api(sqlite_store, broker_url=redis_url, env={"TASKMON_BROKER_GLOBAL_KEYPREFIX": PREFIX})
    with server.client(tokens["viewer"]) as viewer:
        response = viewer.get("/api/v1/queues")
    assert response.status_code == 200, response.text
    assert depth_of(response.json()) == 2


def test_the_sampler_stores_the_prefixed_queue(celery_client, redis_url, engine):
    send_prefixed(celery_client, redis_url, 4)
    sampler = QueueSampler(engine, Settings(broker_url=redis_url, broker_global_keyprefix=PREFIX), 60,
                           lambda: True, clock=now_utc)
    assert sampler.sample() == 1
    assert samples(engine) == [("celery", 4)]


def test_the_queue_depth_rule_fires_on_the_prefixed_queue(celery_client, redis_url, engine):
    send_prefixed(celery_client, redis_url, 5)
    rule = Rule("queue_depth", threshold=3, for_seconds=0, queues=("celery",))
    rules = tuple(r for r in ONLY() if r.name != "queue_depth") + (rule,)  # every other rule off
    settings = Settings(broker_url=redis_url, broker_global_keyprefix=PREFIX, alerts=rules,
                        alert_recipients=("ops@example.com",))
    fired = queue_conditions(queue_depths(settings, rule.queues), rule)
    assert [(c.target, c.detail["messages"]) for c in fired] == [("celery", 5)]
    runner = AlertRunner(engine, settings)
    assert len(runner.evaluate(now_utc())) == 1  # the runner's own read of the broker fires it
    assert runner.counters.get("alerts.broker_errors") == 0
