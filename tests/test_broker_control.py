"""monitor.broker (sending, control) against real workers on the test Redis: send, results, inspect, control, purge, ping."""
from __future__ import annotations

import time

import pytest
import redis

from monitor.broker import calls, control, sending
from tasks.client import client_app

pytestmark = pytest.mark.slow


def backend_of(redis_url: str) -> str:
    return redis_url.rsplit("/", 1)[0] + "/2"


@pytest.fixture
def app(redis_url):
    app = client_app(redis_url, backend_of(redis_url))
    yield app
    app.close()


@pytest.fixture
def worker(redis_url, start_worker):
    return start_worker(redis_url, queues="celery,other", env={"SAMPLE_RESULT_BACKEND": backend_of(redis_url)})


def test_send_with_args_and_kwargs_runs_and_its_result_reads_back(app, worker):
    task_id = sending.send_task(app, "sample.add", [2], {"y": 3}, queue="celery")
    result = sending.wait_result(app, task_id, timeout=15)
    assert (result.state, result.result) == ("SUCCESS", 5)


def test_a_failure_reads_with_its_exception_and_traceback(app, worker):
    task_id = sending.send_task(app, "sample.fail", ["password=hunter2 broke"], queue="celery")
    result = sending.wait_result(app, task_id, timeout=15)
    assert result.state == "FAILURE"
    assert result.exception.startswith("ValueError: ")
    assert "hunter2" not in result.exception and "hunter2" not in result.traceback
    assert "Traceback" in result.traceback


@pytest.mark.parametrize("bad", [{"args": {"a": 1}}, {"kwargs": [1]}, {"priority": 10},
                                 {"countdown": 1, "eta": __import__("datetime").datetime(2030, 1, 1)}])
def test_bad_send_input_is_a_bad_request(app, bad):
    with pytest.raises(calls.BadRequest):
        sending.send_task(app, "sample.add", **bad)


def _ids(app, what, key=None):
    answer = control.inspect(app, what, timeout=1)
    return {(t[key] if key else t)["id"] for tasks in answer.replies.values() for t in tasks}


def _until(predicate, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"after {timeout}s: {what}")


def test_inspect_shows_active_reserved_and_scheduled_tasks(app, redis_url, start_worker):
    # One process and room for two prefetched messages: one task runs, the next waits reserved.
    start_worker(redis_url, queues="celery", concurrency=1, extra=["--prefetch-multiplier", "2"],
                 env={"SAMPLE_RESULT_BACKEND": backend_of(redis_url)})
    eta_id = sending.send_task(app, "sample.add", [1, 1], queue="celery", countdown=120)
    _until(lambda: eta_id in _ids(app, "scheduled", "request"), f"{eta_id} (ETA) scheduled")
    long_id = sending.send_task(app, "sample.sleep", [20], queue="celery")
    _until(lambda: long_id in _ids(app, "active"), f"{long_id} active")
    waiting_id = sending.send_task(app, "sample.add", [1, 2], queue="celery")
    _until(lambda: waiting_id in _ids(app, "reserved"), f"{waiting_id} reserved")
    assert long_id not in _ids(app, "reserved") and eta_id not in _ids(app, "active")
    registered = control.inspect(app, "registered", timeout=1)
    assert all("sample.add" in names for names in registered.replies.values())
    app.control.revoke(long_id, terminate=True)  # the worker need not wait 20 s to stop


def test_inspect_names_the_worker_that_did_not_answer(app, worker):
    answer = control.inspect(app, "stats", workers=[worker.hostname, "ghost@nowhere"], timeout=1)
    assert worker.hostname in answer.replies
    assert answer.missing == ["ghost@nowhere"] and not answer.ok


def test_pool_grow_shows_in_stats_and_rate_limit_is_applied(app, worker):
    before = control.inspect(app, "stats", timeout=1).replies[worker.hostname]["pool"]["processes"]
    grown = control.control(app, "pool-grow", [worker.hostname], n=2)
    assert grown.replies[worker.hostname] == {"ok": "pool will grow"}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = control.inspect(app, "stats", timeout=1).replies[worker.hostname]["pool"]["processes"]
        if len(after) == len(before) + 2:
            break
        time.sleep(0.2)
    assert len(after) == len(before) + 2
    limited = control.control(app, "rate-limit", task_name="sample.add", rate_limit="7/m")
    assert "new rate limit set successfully" in limited.replies[worker.hostname]["ok"]
    registered = control.inspect(app, "registered", timeout=1)  # celery lists a task's rate limit beside it
    assert "sample.add [rate_limit=7/m]" in registered.replies[worker.hostname]


def test_unknown_action_and_argument_are_bad_requests(app):
    with pytest.raises(calls.BadRequest):
        control.control(app, "explode")
    with pytest.raises(calls.BadRequest):
        control.control(app, "pool-grow", queue="x")


def test_purge_empties_the_named_queue_with_its_priority_lists_and_leaves_the_others(app, redis_url):
    for pri in (0, 3, 9):
        sending.send_task(app, "sample.add", [1, 1], queue="doomed", priority=pri)
    sending.send_task(app, "sample.add", [1, 1], queue="kept")
    client = redis.Redis.from_url(redis_url)
    assert client.exists("doomed", "doomed\x06\x163", "doomed\x06\x169") == 3
    counts = control.purge(app, ["doomed"])
    assert [c.as_dict() for c in counts] == [{"queue": "doomed", "messages": 3, "exists": None,
                                              "by_priority": {"0": 1, "3": 1, "9": 1}}]
    assert client.exists("doomed", "doomed\x06\x163", "doomed\x06\x169") == 0
    assert client.llen("kept") == 1


def test_purge_refuses_a_key_that_is_not_a_list_and_deletes_nothing(app, redis_url):
    client = redis.Redis.from_url(redis_url)
    sending.send_task(app, "sample.add", [1, 1], queue="odd")
    sending.send_task(app, "sample.add", [1, 1], queue="fine")
    client.set("odd\x06\x166", "an app's own key, not a queue")  # after: kombu's publish reads them too
    with pytest.raises(calls.BadRequest, match="is not a queue"):
        control.purge(app, ["fine", "odd"])
    assert client.get("odd\x06\x166") == b"an app's own key, not a queue"
    assert client.llen("odd") == 1 and client.llen("fine") == 1


def test_purge_on_rabbitmq_counts_and_flags_unknown_queues(amqp_url):
    app = client_app(amqp_url)
    try:
        sending.send_task(app, "sample.add", [1, 1], queue="doomed_amqp")
        sending.send_task(app, "sample.add", [1, 1], queue="kept_amqp")
        counts = {c.queue: c for c in control.purge(app, ["doomed_amqp", "never_declared"])}
        assert counts["doomed_amqp"].messages == 1 and counts["doomed_amqp"].exists
        assert counts["never_declared"].exists is False
        assert control.purge(app, ["kept_amqp"])[0].messages == 1
    finally:
        app.close()


def test_on_rabbitmq_inspect_control_and_ping_reach_a_real_worker(amqp_url, redis_url, start_worker):
    worker = start_worker(amqp_url, queues="celery", env={"SAMPLE_RESULT_BACKEND": backend_of(redis_url)})
    app = client_app(amqp_url, backend_of(redis_url))
    try:
        long_id = sending.send_task(app, "sample.sleep", [30], queue="celery")
        _until(lambda: long_id in _ids(app, "active"), f"{long_id} active on RabbitMQ")
        grown = control.control(app, "pool-grow", [worker.hostname], n=1)
        assert grown.replies == {worker.hostname: {"ok": "pool will grow"}} and grown.ok
        report = sending.ping(app, queue="celery", timeout=15, task="sample.ping")
        assert report.ok, report.reason
        assert report.workers == [worker.hostname] and report.task_state == "SUCCESS"
        app.control.revoke(long_id, terminate=True)
    finally:
        app.close()


def test_ping_with_a_worker_reports_the_round_trip(app, worker):
    report = sending.ping(app, queue="celery", timeout=15, task="sample.ping")
    assert report.ok, report.reason
    assert worker.hostname in report.workers and report.latency_seconds > 0 and report.task_state == "SUCCESS"


def test_ping_without_workers_is_not_ok_and_says_why(app):
    report = sending.ping(app, timeout=2, task="sample.ping")
    assert report.broker_ok and not report.ok and "no worker answered" in report.reason


def test_a_broker_that_is_down_is_one_line_and_bounded():
    from monitor.redis_server import free_port

    app = client_app(f"redis://:secret@127.0.0.1:{free_port()}/0", f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    for call in (lambda: sending.send_task(app, "x", timeout=2), lambda: control.inspect(app, "stats", timeout=1),
                 lambda: control.purge(app, ["q"], timeout=2), lambda: sending.read_result(app, "id", timeout=2)):
        with pytest.raises(calls.BrokerUnreachable) as info:
            call()
        assert "\n" not in str(info.value) and "secret" not in str(info.value)
    report = sending.ping(app, timeout=2)
    assert not report.broker_ok and not report.ok
    assert time.monotonic() - started < 20
    app.close()
