"""A broker or database that went away is a 503 with the reason, at once; bad input is a 4xx; never a traceback."""
from __future__ import annotations

import json
import time

from monitor.redis_server import free_port
from tests.api_fixtures import role_tokens, start_api  # noqa: F401  (fixture)


def problem(answer, status: int) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert set(body) == {"type", "title", "status", "detail"} and "Traceback" not in answer.text
    return body


def test_a_broker_that_is_down_is_a_503_with_the_reason_and_no_hang(sqlite_store, start_api):
    tokens = role_tokens(sqlite_store)
    down = f"redis://:secret@127.0.0.1:{free_port()}/0"
    server = start_api(sqlite_store, broker_url=down, env={"TASKMON_RESULT_BACKEND": down})
    with server.client(tokens["operator"]) as client:
        for method, path, body in [("GET", "/api/v1/queues", None),
                                   ("POST", "/api/v1/tasks", {"task_name": "sample.add", "args": [1, 2]}),
                                   ("POST", "/api/v1/tasks/some-id/revoke", {"terminate": True}),
                                   ("GET", "/api/v1/tasks/some-id/result", None)]:
            started = time.monotonic()
            detail = problem(client.request(method, path, json=body), 503)["detail"]
            assert time.monotonic() - started < 15, f"{method} {path} took too long"
            assert f"127.0.0.1:{down.rsplit(':', 1)[1].split('/')[0]}" in detail, detail
            assert "secret" not in detail and ":***@" in detail  # the URL's password is masked
    # the server itself is fine: the history still answers
    with server.client(tokens["viewer"]) as client:
        assert client.get("/api/v1/tasks").status_code == 200


def test_a_database_that_went_away_is_a_503_saying_so(pg_server_url, pg_url, start_api):
    from sqlalchemy import create_engine, text

    from storage.db import make_engine, upgrade

    engine = make_engine(pg_url)
    upgrade(engine)
    engine.dispose()
    tokens = role_tokens(pg_url)
    name = pg_server_url.database  # this run's own database (tests/conftest.py made it)
    admin = create_engine(pg_server_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    backends = "SELECT pid FROM pg_stat_activity WHERE datname = :name"
    with admin.connect() as conn:
        others = set(conn.execute(text(backends), {"name": name}).scalars())  # the fixtures' connections
    server = start_api(pg_url)
    try:
        with server.client(tokens["viewer"]) as client:
            assert client.get("/api/v1/tasks").status_code == 200
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                for pid in set(conn.execute(text(backends), {"name": name}).scalars()) - others:
                    conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})  # the server's
            for path in ("/api/v1/tasks", "/api/v1/stats", "/api/v1/workers"):
                detail = problem(client.get(path), 503)["detail"]
                assert "database" in detail, detail
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    with server.client(tokens["viewer"]) as client:  # and back again once it is
        assert client.get("/api/v1/tasks").status_code == 200


def test_bad_input_is_a_4xx_problem(sqlite_store, start_api):
    tokens = role_tokens(sqlite_store)
    server = start_api(sqlite_store)
    with server.client(tokens["operator"]) as client:
        assert "is not a time" in problem(client.get("/api/v1/tasks", params={"since": "yesterday"}), 400)["detail"]
        assert "unknown state NOPE" in problem(client.get("/api/v1/tasks", params={"state": "nope"}), 400)["detail"]
        problem(client.get("/api/v1/tasks", params={"limit": "0"}), 422)
        problem(client.get("/api/v1/tasks/unknown-id"), 404)
        problem(client.get("/api/v1/reports/yearly"), 422)
        problem(client.get("/api/v1/no-such-endpoint"), 404)
        not_json = client.post("/api/v1/tasks", content=b'{"task_name": "a.b", "args": [1,',
                               headers={"Content-Type": "application/json"})
        problem(not_json, 422)
        problem(client.post("/api/v1/tasks", json={"task_name": "a.b", "args": {"not": "a list"}}), 422)
        problem(client.post("/api/v1/tasks", json={"task_name": "a.b", "priority": 10}), 422)
        for number in ("expires", "countdown", "priority", "timeout"):  # JSON true/false is not 1/0
            body = problem(client.post("/api/v1/tasks", json={"task_name": "a.b", number: False}), 422)
            assert f"{number}: a number, not true or false" in json.dumps(body)
        problem(client.post("/api/v1/tasks", json={"task_name": "a.b", "countdown": 5,
                                                   "eta": "2030-01-01T00:00:00Z"}), 422)
        problem(client.post("/api/v1/schedule", json={"name": "x", "task": "a.b", "cron": "not a crontab"}), 400)
        problem(client.delete("/api/v1/tasks"), 405)
        assert "NUL" in problem(client.get("/api/v1/tasks", params={"q": "a\x00b"}), 400)["detail"]
