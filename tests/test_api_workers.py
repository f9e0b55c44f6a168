"""Live inspect, worker control and purge through the API, on a real worker and a real Redis."""
from __future__ import annotations

import time

import pytest

from tests.api_fixtures import role_tokens, start_api  # noqa: F401  (fixture)
from tests.test_api_seed import poll


@pytest.fixture
def live(sqlite_store, redis_url, start_worker, start_api):
    worker = start_worker(redis_url, concurrency=1)
    tokens = role_tokens(sqlite_store)
    server = start_api(sqlite_store, broker_url=redis_url)
    return server, tokens, worker


def test_inspect_answers_live_for_the_running_worker(live):
    server, tokens, worker = live
    with server.client(tokens["viewer"]) as viewer:
        rows = viewer.get("/api/v1/workers", params=[("inspect", "registered"), ("inspect", "stats"),
                                                     ("inspect", "active_queues"), ("inspect", "conf")]).json()
    mine = next(r for r in rows if r["hostname"] == worker.hostname)  # no daemon: not stored, answered live
    assert "sample.add" in mine["live"]["registered"]
    assert mine["live"]["stats"]["pool"]["max-concurrency"] == 1
    assert [q["name"] for q in mine["live"]["active_queues"]] == ["celery"]
    assert "broker_url" not in mine["live"]["conf"] or ":***@" in str(mine["live"]["conf"]) or \
        "@" not in str(mine["live"]["conf"].get("broker_url"))


def test_pool_consumers_limits_and_shutdown_reach_the_worker(live):
    server, tokens, worker = live
    host = worker.hostname
    with server.client(tokens["admin"]) as admin:
        grown = admin.post(f"/api/v1/workers/{host}/pool/grow", json={"n": 1})
        assert grown.status_code == 200 and grown.json()["reply"] == {"ok": "pool will grow"}

        def processes():
            stats = admin.get("/api/v1/workers", params={"inspect": "stats"}).json()
            return next(r for r in stats if r["hostname"] == host)["live"]["stats"]["pool"]["processes"]

        poll(processes, lambda p: len(p) == 2, "the pool to grow to 2 processes")
        assert admin.post(f"/api/v1/workers/{host}/pool/shrink", json={"n": 1}).status_code == 200
        poll(processes, lambda p: len(p) == 1, "the pool to shrink to 1 process")

        assert admin.post(f"/api/v1/workers/{host}/consumers/add", json={"queue": "extra"}).status_code == 200

        def queues():
            rows = admin.get("/api/v1/workers", params={"inspect": "active_queues"}).json()
            return sorted(q["name"] for q in next(r for r in rows if r["hostname"] == host)["live"]["active_queues"])

        poll(queues, lambda q: q == ["celery", "extra"], "the worker to consume from extra")
        assert admin.post(f"/api/v1/workers/{host}/consumers/cancel", json={"queue": "extra"}).status_code == 200
        poll(queues, lambda q: q == ["celery"], "the worker to stop consuming from extra")

        limited = admin.post(f"/api/v1/workers/{host}/rate-limit", json={"task_name": "sample.add", "rate": "5/m"})
        assert limited.status_code == 200 and "new rate limit set successfully" in limited.json()["reply"]["ok"]
        timed = admin.post(f"/api/v1/workers/{host}/time-limit", json={"task_name": "sample.sleep", "soft": 1,
                                                                      "hard": 3})
        assert timed.status_code == 200 and "time limits set successfully" in timed.json()["reply"]["ok"]
        unknown = admin.post(f"/api/v1/workers/{host}/rate-limit", json={"task_name": "no.such", "rate": "1/s"})
        assert unknown.status_code == 400 and "unknown task" in unknown.json()["detail"].lower()

        started = time.monotonic()
        nobody = admin.post("/api/v1/workers/celery@nowhere/pool/grow", json={"n": 1})
        assert nobody.status_code == 404 and time.monotonic() - started < 10

        assert admin.post(f"/api/v1/workers/{host}/shutdown").status_code == 200
        worker.proc.wait(timeout=30)
        audit = admin.get("/api/v1/audit", params={"actor": "admin"}).json()
    assert [e["action"] for e in audit][:2] == ["worker.shutdown", "worker.pool_grow"]


def test_purge_empties_a_queue_and_its_priority_steps(live, celery_client, redis_url):
    server, tokens, _ = live
    app = celery_client(redis_url, broker_transport_options={"priority_steps": list(range(10))})
    for priority in (0, 3, 9):
        app.send_task("sample.add", (1, 2), queue="parked", priority=priority)
    with server.client(tokens["admin"]) as admin:
        depth = admin.get("/api/v1/queues", params={"queue": "parked"}).json()
        assert next(q for q in depth if q["name"] == "parked")["messages"] == 3
        purged = admin.post("/api/v1/queues/parked/purge")
        assert purged.status_code == 200 and purged.json() == {"queue": "parked", "purged": 3}
        depth = admin.get("/api/v1/queues", params={"queue": "parked"}).json()
        assert next(q for q in depth if q["name"] == "parked")["messages"] == 0
