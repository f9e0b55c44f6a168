"""The seven calls of the management guide end to end: a real server, real Redis, a real worker, SQLite and PostgreSQL.

list, send, status, revoke (terminate stops a running task), stats, history, workers: a task sent through
the API runs on the worker, and its history row is then visible through the API.
"""
from __future__ import annotations

import time

import pytest

from tests.api_fixtures import role_tokens, start_api  # noqa: F401  (fixture)
from tests.daemon_helpers import running_daemon


def poll(fetch, until, what: str, timeout: float = 30.0):
    """fetch() until until(value); fail saying what was awaited and what was last seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout}s still waiting for {what}; last: {value!r}"[:2000])
        time.sleep(0.2)


@pytest.fixture
def stack(db_url, redis_server, redis_url, start_worker, start_api):
    """Broker and result backend (Redis databases 0 and 1), the daemon, a worker and the API server."""
    backend = redis_server.url.rsplit("/", 1)[0] + "/1"
    with running_daemon(redis_url, db_url):
        worker = start_worker(redis_url, env={"SAMPLE_RESULT_BACKEND": backend})
        tokens = role_tokens(db_url)
        server = start_api(db_url, broker_url=redis_url, env={"TASKMON_RESULT_BACKEND": backend})
        yield server, tokens, worker


def test_the_seven_calls_send_status_list_history_stats_workers_and_revoke(stack):
    server, tokens, worker = stack
    operator, viewer = server.client(tokens["operator"]), server.client(tokens["viewer"])

    # 2. send a task by name, waiting for its result
    sent = operator.post("/api/v1/tasks", json={"task_name": "sample.add", "args": [2, 3], "kwargs": {},
                                                "wait": True, "timeout": 20})
    assert sent.status_code == 200, sent.text
    task_id = sent.json()["task_id"]
    assert sent.json()["result"]["state"] == "SUCCESS" and sent.json()["result"]["result"] == 5

    # 3. its status: the history row the daemon wrote, with its timeline
    detail = poll(lambda: viewer.get(f"/api/v1/tasks/{task_id}"),
                  lambda r: r.status_code == 200 and r.json()["run"]["state"] == "SUCCESS", f"{task_id} SUCCESS")
    run = detail.json()["run"]
    assert run["name"] == "sample.add" and run["args"] == "[2, 3]" and run["result"] == "5"
    assert run["worker"] == worker.hostname
    assert [step["event"] for step in detail.json()["timeline"]][-1] == "finished"
    assert viewer.get(f"/api/v1/tasks/{task_id}/result").json()["result"] == 5

    # 1. the list, newest first, and 6. the history with filters
    listed = viewer.get("/api/v1/tasks").json()
    assert listed["count"] >= 1 and listed["results"][0]["task_id"] == task_id
    history = viewer.get("/api/v1/tasks", params={"name": "sample.*", "state": "SUCCESS", "since": "1h"}).json()
    assert [r["task_id"] for r in history["results"]] == [task_id]

    # 4. revoke with terminate stops a task that is running
    slow = operator.post("/api/v1/tasks", json={"task_name": "sample.sleep", "args": [60]}).json()["task_id"]
    poll(lambda: viewer.get(f"/api/v1/tasks/{slow}"),
         lambda r: r.status_code == 200 and r.json()["run"]["state"] == "STARTED", f"{slow} STARTED")
    revoked = operator.post(f"/api/v1/tasks/{slow}/revoke", json={"terminate": True, "signal": "SIGKILL"})
    assert revoked.status_code == 200 and revoked.json() == {"task_id": slow, "terminate": True, "signal": "SIGKILL",
                                                             "known": True, "state": "STARTED"}
    started = time.monotonic()
    stopped = poll(lambda: viewer.get(f"/api/v1/tasks/{slow}"), lambda r: r.json()["run"]["state"] == "REVOKED",
                   f"{slow} REVOKED")
    assert time.monotonic() - started < 20  # stopped, not left to sleep its 60 s
    assert stopped.json()["run"]["finished_at"] is None or stopped.json()["run"]["runtime"] is None or \
        stopped.json()["run"]["runtime"] < 30
    assert viewer.get(f"/api/v1/tasks/{slow}/result").json()["state"] == "REVOKED"

    # 5. stats of the window
    stats = viewer.get("/api/v1/stats", params={"since": "1h"}).json()
    per_name = {t["name"]: t for t in stats["tasks"]}
    assert per_name["sample.add"]["states"]["SUCCESS"] == 1 and per_name["sample.sleep"]["states"]["REVOKED"] == 1

    # 7. the workers
    workers = viewer.get("/api/v1/workers").json()
    assert [(w["hostname"], w["state"]) for w in workers] == [(worker.hostname, "online")]

    # the audit log says who sent and revoked what
    audit = viewer.get("/api/v1/audit", params={"actor": "operator"}).json()
    assert [(e["action"], e["target"]) for e in audit] == [("task.revoke", slow), ("task.send", "sample.sleep"),
                                                           ("task.send", "sample.add")]


def test_a_result_the_history_never_saw_is_read_from_the_backend(stack):
    server, tokens, _ = stack
    with server.client(tokens["viewer"]) as viewer:
        answer = viewer.get("/api/v1/tasks/never-sent-0001/result")
        assert answer.status_code == 200
        assert answer.json()["state"] == "PENDING" and answer.json()["ready"] is False
        assert viewer.get("/api/v1/tasks/never-sent-0001").status_code == 404
