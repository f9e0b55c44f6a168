"""`taskmon serve`: starts only with tokens (or --insecure-no-auth, with a warning), answers /healthz and the API."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.api_helpers import ApiServer, create_token, taskmon


@pytest.fixture
def servers(tmp_path):
    started: list[ApiServer] = []

    def start(db_url, *args, **kwargs) -> ApiServer:
        server = ApiServer(db_url, *args, logdir=tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_serve_refuses_to_start_without_any_token(sqlite_store, servers):
    server = servers(sqlite_store)
    assert server.proc.wait(30) == 1
    out = server.output()
    assert "Error: no API tokens: create one with `taskmon token create" in out
    assert "Traceback" not in out


def test_insecure_no_auth_serves_without_tokens_and_warns_on_every_start(sqlite_store, servers):
    for _ in range(2):
        server = servers(sqlite_store, "--insecure-no-auth").wait_ready()
        with server.client() as client:
            assert client.get("/api/v1/tasks").status_code == 200
        server.stop()
        assert "WARNING: --insecure-no-auth: the API has no authentication" in server.output()


def test_a_token_reads_the_history_and_a_missing_one_is_401(sqlite_store, servers):
    token = create_token(sqlite_store, "alice", "viewer")
    assert token.startswith("tm_") and len(token) > 40
    server = servers(sqlite_store).wait_ready()
    with server.client(token) as client:
        answer = client.get("/api/v1/tasks")
        assert answer.status_code == 200
        assert answer.json() == {"count": 0, "results": [], "next_cursor": None}
    with server.client() as anonymous:
        answer = anonymous.get("/api/v1/tasks")
        assert answer.status_code == 401
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["www-authenticate"] == "Bearer"
        assert set(answer.json()) == {"type", "title", "status", "detail"}
        # /healthz mirrors `taskmon check` and needs no token: no daemon has run here, so 503 and why
        health = anonymous.get("/healthz")
        assert health.status_code == 503
        assert health.json()["reason"] == taskmon("check", db_url=sqlite_store).stdout.strip().removeprefix("FAIL: ")


def test_the_token_itself_is_never_stored(sqlite_store):
    import sqlite3

    token = create_token(sqlite_store, "bob", "admin")
    path = sqlite_store.removeprefix("sqlite:///")
    with open(path, "rb") as f:
        assert token.encode() not in f.read()
    rows = sqlite3.connect(path).execute("SELECT name, role, token_hash FROM api_tokens").fetchall()
    assert rows == [("bob", "admin", __import__("hashlib").sha256(token.encode()).hexdigest())]


def test_token_commands_say_one_line_on_bad_input(sqlite_store):
    create_token(sqlite_store, "carol", "viewer")
    again = taskmon("token", "create", "--name", "carol", "--role", "viewer", db_url=sqlite_store)
    assert again.returncode == 1 and again.stderr.strip().splitlines() == [
        "Error: a token named 'carol' exists already; revoke it or pick another name"]
    unknown = taskmon("token", "revoke", "nobody", db_url=sqlite_store)
    assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1
    listed = taskmon("token", "list", "--json", db_url=sqlite_store)
    assert '"name": "carol"' in listed.stdout and "tm_" not in listed.stdout


def _children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_two_server_processes_share_the_session_secret_and_all_stop_on_sigterm(sqlite_store, servers):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    token = create_token(sqlite_store, "alice", "viewer")
    server = servers(sqlite_store, "--workers", "2").wait_ready(timeout=90)
    assert "2 server processes" in server.output()
    workers = _children(server.proc.pid)
    assert len(workers) >= 2  # the two servers (and multiprocessing's resource tracker, perhaps)
    cookies = httpx.post(server.url + "/login", data={"token": token}).cookies
    assert cookies

    def fresh_connection(_):
        # Each request on a connection of its own, many at once: both processes accept some.
        with httpx.Client(base_url=server.url, cookies=cookies, timeout=30) as client:
            return client.get("/api/v1/tasks?limit=1").status_code, client.get("/tasks").status_code

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(fresh_connection, range(40)))
    assert answers == [(200, 200)] * 40  # a cookie signed by one process is good in the other
    server.stop()
    assert server.proc.returncode == 0

    def running():
        return [pid for pid in workers if Path(f"/proc/{pid}").exists() and
                Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"]
    deadline = time.monotonic() + 5  # a child may exit a moment after its parent, on a loaded machine
    while running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not running(), "a server process outlived SIGTERM by 5 s"
