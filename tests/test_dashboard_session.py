"""The dashboard's login, session cookie, CSRF and headers, over HTTP against a real `taskmon serve`."""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import httpx
import pytest

from monitor.http.pages import HERE
from tests.api_helpers import ApiServer
from tests.browser import taskmon


@pytest.fixture
def served(sqlite_store, redis_url, tmp_path):
    tokens = {role: taskmon("token", "create", "--name", f"s-{role}", "--role", role, db_url=sqlite_store)
              for role in ("viewer", "operator", "admin")}
    server = ApiServer(sqlite_store, broker_url=redis_url, logdir=tmp_path).wait_ready()
    yield server, tokens, sqlite_store
    server.stop()


@contextmanager
def logged_in(server, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        answer = client.post("/login", data={"token": token, "next": "/tasks"})
        assert answer.status_code == 303 and answer.headers["location"] == "/tasks"
        yield client


def csrf_of(client: httpx.Client) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)">', client.get("/tasks").text).group(1)


def test_a_page_without_a_session_sends_the_browser_to_the_login_page(served):
    server, _, _ = served
    answer = httpx.get(server.url + "/tasks?state=FAILURE")
    assert answer.status_code == 303 and answer.headers["location"] == "/login?next=/tasks%3Fstate%3DFAILURE"


def test_login_sets_a_signed_httponly_strict_cookie_and_a_bad_token_gets_401(served):
    server, tokens, _ = served
    bad = httpx.post(server.url + "/login", data={"token": "tm_wrong"})
    assert bad.status_code == 401 and "not valid" in bad.text and "set-cookie" not in bad.headers
    good = httpx.post(server.url + "/login", data={"token": tokens["viewer"]})
    cookie = good.headers["set-cookie"]
    assert cookie.startswith("taskmon_session=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain http here; over TLS the cookie is Secure
    assert tokens["viewer"] not in cookie  # it holds the token's hash, signed


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example"])
def test_login_never_redirects_to_another_site(served, target):
    server, tokens, _ = served
    answer = httpx.post(server.url + "/login", data={"token": tokens["viewer"], "next": target})
    assert answer.headers["location"] == "/"


def test_a_tampered_cookie_and_a_revoked_token_end_the_session_at_once(served):
    server, tokens, db = served
    with logged_in(server, tokens["viewer"]) as client:
        assert client.get("/tasks").status_code == 200
        value = client.cookies["taskmon_session"]
        forged = httpx.get(server.url + "/tasks", cookies={"taskmon_session": value[:-2] + "xx"})
        assert forged.status_code == 303
        taskmon("token", "revoke", "s-viewer", db_url=db)
        assert client.get("/tasks").status_code == 303
        assert client.get("/api/v1/tasks").status_code == 401


def test_state_changing_requests_need_the_session_s_csrf_token(served):
    server, tokens, _ = served
    with logged_in(server, tokens["operator"]) as client:
        token = csrf_of(client)
        without = client.post("/logout")
        assert without.status_code == 403 and without.json()["title"] == "CSRF token missing"
        api = client.post("/api/v1/alerts/test", json={})
        assert api.status_code == 403
        out = client.post("/logout", headers={"X-CSRF-Token": token})
        assert out.status_code == 200 and out.json() == {"location": "/login"}
        assert "taskmon_session" not in client.cookies
        assert client.get("/tasks").status_code == 303


def test_pages_carry_a_strict_content_security_policy(served):
    server, tokens, _ = served
    with logged_in(server, tokens["viewer"]) as client:
        for path in ("/", "/tasks", "/workers", "/queues", "/dead-letters", "/alerts", "/schedule", "/login"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            csp = answer.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
            assert answer.headers["x-content-type-options"] == "nosniff"


def test_bad_filters_are_a_4xx_page_never_a_500(served):
    server, tokens, _ = served
    with logged_in(server, tokens["viewer"]) as client:
        for path in ('/tasks?q=args:"open', "/tasks?state=NOPE", "/tasks?since=yesterdayish", "/tasks?sort=size",
                     "/tasks?cursor=zzz", "/?window=2y", "/tasks/no-such-task", "/dead-letters?since=x",
                     "/tasks/export.csv?state=NOPE", "/tasks/stream?after=not-a-time"):
            answer = client.get(path)
            assert 400 <= answer.status_code < 500, (path, answer.status_code, answer.text[:200])
            assert "Traceback" not in answer.text


def test_the_csv_export_keeps_formula_text_inert(served, redis_url):
    from datetime import datetime, timezone

    from storage.db import make_engine
    from storage.runs import upsert_runs

    server, tokens, db = served
    engine = make_engine(db)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        upsert_runs(conn, [{"task_id": "csv-1", "name": "=HYPERLINK(\"http://x\")", "state": "SUCCESS", "state_at": now,
                            "seen_at": now, "updated_at": now}])
    engine.dispose()
    with logged_in(server, tokens["viewer"]) as client:
        answer = client.get("/tasks/export.csv")
    assert answer.status_code == 200 and "attachment" in answer.headers["content-disposition"]
    assert "'=HYPERLINK" in answer.text


def test_templates_have_no_inline_scripts_or_event_handlers():
    for template in (HERE / "templates").glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), template.name
        assert not re.search(r"<[a-zA-Z][^>]*\son[a-z]+\s*=", text), template.name
        assert "style=" not in text, template.name


def test_the_server_stops_on_sigterm_while_a_live_stream_is_open(served):
    import signal
    import threading
    import time

    server, tokens, _ = served
    with logged_in(server, tokens["viewer"]) as client:
        opened = threading.Event()

        def listen():
            try:
                with client.stream("GET", "/tasks/stream", params={"after": "2026-01-01T00:00:00+00:00"}) as stream:
                    for _ in stream.iter_lines():
                        opened.set()
            except httpx.TransportError:  # the server closed the stream: what this test waits for
                pass

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        assert opened.wait(10), "the stream did not open"
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=15)
        assert time.monotonic() - t0 < 10


def test_buttons_show_only_for_the_roles_that_may_use_them(served):
    server, tokens, _ = served
    shown = {}
    for role in ("viewer", "operator", "admin"):
        with logged_in(server, tokens[role]) as client:
            shown[role] = {"purge": ">Purge<" in client.get("/queues").text,
                           "test alert": 'id="test-alert"' in client.get("/alerts").text}
    assert shown == {"viewer": {"purge": False, "test alert": False},
                     "operator": {"purge": False, "test alert": True},
                     "admin": {"purge": True, "test alert": True}}


def test_only_an_operator_gets_a_schedule_entry_s_edit_form_and_its_patch_needs_the_csrf_token(served):
    server, tokens, _ = served
    entry = "backup-database"  # every history starts with it (migration 0004)
    with logged_in(server, tokens["viewer"]) as viewer:
        assert 'data-edit="backup-database"' not in viewer.get("/schedule").text
        assert viewer.get(f"/schedule/{entry}/edit").status_code == 403
    with logged_in(server, tokens["operator"]) as operator:
        assert 'data-edit="backup-database"' in operator.get("/schedule").text
        form = operator.get(f"/schedule/{entry}/edit")
        assert form.status_code == 200 and 'data-method="PATCH"' in form.text
        assert operator.get("/schedule/no-such-entry/edit").status_code == 404
        refused = operator.patch(f"/api/v1/schedule/{entry}", json={"every": 90})
        assert refused.status_code == 403  # no X-CSRF-Token: the form's call cannot be forged from another site
        done = operator.patch(f"/api/v1/schedule/{entry}", json={"every": 90},
                              headers={"X-CSRF-Token": csrf_of(operator)})
        assert done.status_code == 200 and done.json()["interval_seconds"] == 90


def test_the_queues_page_refuses_a_window_it_does_not_know_with_a_400_page(served):
    server, tokens, _ = served
    with logged_in(server, tokens["viewer"]) as client:
        bad = client.get("/queues?window=9y")
        assert bad.status_code == 400 and "use one of 1h" in bad.text
        assert client.get("/queues?window=7d").status_code == 200
