"""Every route x {no token, bad token, viewer, operator, admin} gives the documented status; revoked tokens are refused at once."""
from __future__ import annotations

import pytest

from tests.api_fixtures import ROLES, role_tokens, start_api  # noqa: F401  (fixture)
from tests.api_helpers import taskmon

ENTRY = "backup-database"
NOBODY = "celery@nowhere"  # no such worker: control calls wait for its answer, then 404 (shutdown is not answered)  # a schedule entry every history starts with (migration 0004)

# (method, path as the app declares it, concrete path, body for a role, least role (None: open), status it then gets)
# Statuses are those of an empty history with a reachable broker and SMTP server and no daemon or worker.
CASES = [
    ("GET", "/healthz", "/healthz", None, None, 503),
    ("GET", "/api/v1/openapi.json", "/api/v1/openapi.json", None, None, 200),
    ("GET", "/api/v1/docs", "/api/v1/docs", None, None, 200),
    ("GET", "/api/v1/tasks", "/api/v1/tasks?since=1h", None, "viewer", 200),
    ("GET", "/api/v1/tasks/{task_id}", "/api/v1/tasks/no-such-id", None, "viewer", 404),
    ("GET", "/api/v1/task-names", "/api/v1/task-names", None, "viewer", 200),
    ("POST", "/api/v1/tasks", "/api/v1/tasks", lambda r: {"task_name": "sample.add", "args": [1, 2]}, "operator", 202),
    ("GET", "/api/v1/tasks/{task_id}/result", "/api/v1/tasks/no-such-id/result", None, "viewer", 200),
    ("POST", "/api/v1/tasks/{task_id}/revoke", "/api/v1/tasks/no-such-id/revoke", lambda r: {}, "operator", 200),
    ("POST", "/api/v1/tasks/{task_id}/replay", "/api/v1/tasks/no-such-id/replay", lambda r: {}, "operator", 404),
    ("GET", "/api/v1/stats", "/api/v1/stats?since=7d", None, "viewer", 200),
    ("GET", "/api/v1/reports/{kind}", "/api/v1/reports/weekly", None, "viewer", 200),
    ("GET", "/api/v1/workers", "/api/v1/workers", None, "viewer", 200),
    ("GET", "/api/v1/queues", "/api/v1/queues", None, "viewer", 200),
    ("POST", "/api/v1/queues/{name}/purge", "/api/v1/queues/matrix-parked/purge", None, "admin", 200),
    ("POST", "/api/v1/workers/{hostname}/pool/grow", f"/api/v1/workers/{NOBODY}/pool/grow?timeout=0.2", lambda r: {"n": 1},
     "admin", 404),
    ("POST", "/api/v1/workers/{hostname}/pool/shrink", f"/api/v1/workers/{NOBODY}/pool/shrink?timeout=0.2", None, "admin", 404),
    ("POST", "/api/v1/workers/{hostname}/pool/autoscale", f"/api/v1/workers/{NOBODY}/pool/autoscale?timeout=0.2",
     lambda r: {"max": 4, "min": 1}, "admin", 404),
    ("POST", "/api/v1/workers/{hostname}/shutdown", f"/api/v1/workers/{NOBODY}/shutdown", None, "admin", 200),
    ("POST", "/api/v1/workers/{hostname}/consumers/add", f"/api/v1/workers/{NOBODY}/consumers/add?timeout=0.2",
     lambda r: {"queue": "extra"}, "admin", 404),
    ("POST", "/api/v1/workers/{hostname}/consumers/cancel", f"/api/v1/workers/{NOBODY}/consumers/cancel?timeout=0.2",
     lambda r: {"queue": "extra"}, "admin", 404),
    ("POST", "/api/v1/workers/{hostname}/rate-limit", f"/api/v1/workers/{NOBODY}/rate-limit?timeout=0.2",
     lambda r: {"task_name": "sample.add", "rate": "10/m"}, "admin", 404),
    ("POST", "/api/v1/workers/{hostname}/time-limit", f"/api/v1/workers/{NOBODY}/time-limit?timeout=0.2",
     lambda r: {"task_name": "sample.add", "soft": 1, "hard": 2}, "admin", 404),
    ("GET", "/api/v1/dead-letters", "/api/v1/dead-letters?state=all", None, "viewer", 200),
    ("POST", "/api/v1/dead-letters/{task_id}/resolve", "/api/v1/dead-letters/no-such-id/resolve", lambda r: {},
     "operator", 404),
    ("POST", "/api/v1/dead-letters/replay", "/api/v1/dead-letters/replay", lambda r: {"name": "nothing.*"},
     "operator", 200),
    ("GET", "/api/v1/alerts", "/api/v1/alerts", None, "viewer", 200),
    ("POST", "/api/v1/alerts/test", "/api/v1/alerts/test", lambda r: {"to": [f"{r}@example.com"]}, "operator", 200),
    ("GET", "/api/v1/schedule", "/api/v1/schedule", None, "viewer", 200),
    ("POST", "/api/v1/schedule", "/api/v1/schedule",
     lambda r: {"name": f"matrix-{r}", "task": "sample.add", "every": 60, "args": [1, 2]}, "operator", 201),
    ("PATCH", "/api/v1/schedule/{name}", f"/api/v1/schedule/{ENTRY}", lambda r: {"description": f"by {r}"},
     "operator", 200),
    ("POST", "/api/v1/schedule/{name}/disable", f"/api/v1/schedule/{ENTRY}/disable", None, "operator", 200),
    ("POST", "/api/v1/schedule/{name}/enable", f"/api/v1/schedule/{ENTRY}/enable", None, "operator", 200),
    ("POST", "/api/v1/schedule/{name}/run", f"/api/v1/schedule/{ENTRY}/run", None, "operator", 202),
    ("DELETE", "/api/v1/schedule/{name}", "/api/v1/schedule/matrix-{role}", None, "operator", 204),
    ("GET", "/api/v1/daemon", "/api/v1/daemon", None, "viewer", 404),
    ("GET", "/api/v1/gaps", "/api/v1/gaps", None, "viewer", 200),
    ("GET", "/api/v1/audit", "/api/v1/audit", None, "viewer", 200),
    ("GET", "/api/v1/tokens", "/api/v1/tokens", None, "admin", 200),
    ("POST", "/api/v1/tokens", "/api/v1/tokens", lambda r: {"name": f"made-by-{r}", "role": "viewer"}, "admin", 201),
    ("DELETE", "/api/v1/tokens/{name}", "/api/v1/tokens/made-by-{role}", None, "admin", 204),
    ("GET", "/metrics", "/metrics", None, "viewer", 200),
]


def declared_roles() -> dict[tuple[str, str], str | None]:
    """{(method, path): the role its dependency asks for} of every route the app serves."""
    from monitor.http.app import create_app, iter_routes
    from monitor.http.auth import required_role
    from storage.db import make_engine
    from tasks.settings import Settings

    app = create_app(Settings(database_url="sqlite://"), make_engine("sqlite://"))
    return {(method, route.path): required_role(route) for route in iter_routes(app.routes)
            if not dashboard_page(route)
            for method in getattr(route, "methods", None) or () if method != "HEAD"}


def dashboard_page(route) -> bool:
    """The dashboard's pages and files: tested in a browser by tests/test_dashboard_browser.py."""
    module = getattr(getattr(route, "endpoint", None), "__module__", "") or ""
    return module.startswith("monitor.http.pages") or route.path == "/static"


def test_the_matrix_covers_every_route_and_each_route_s_role_is_the_documented_one():
    assert {(m, p): role for m, p, _, _, role, _ in CASES} == declared_roles()


@pytest.fixture
def matrix_server(sqlite_store, redis_server, redis_url, smtp_server, start_api):
    tokens = role_tokens(sqlite_store)
    env = {"TASKMON_SMTP_HOST": "127.0.0.1", "TASKMON_SMTP_PORT": str(smtp_server.port),
           "TASKMON_RESULT_BACKEND": redis_server.url.rsplit("/", 1)[0] + "/1"}
    server = start_api(sqlite_store, "--bad-token-limit", "10000/minute", broker_url=redis_url, env=env)
    return server, tokens


def test_every_route_gives_401_403_or_its_status_to_no_bad_viewer_operator_and_admin_tokens(matrix_server):
    server, tokens = matrix_server
    callers = {"none": None, "bad": "tm_not-a-token", **tokens}
    failures = []
    for caller, token in callers.items():
        rank = ROLES.index(caller) if caller in ROLES else -1
        with server.client(token) as client:
            for method, _, path, body, role, allowed in CASES:
                path = path.format(role=caller)
                answer = client.request(method, path, json=body(caller) if body else None)
                if role is None:
                    expected = allowed
                elif token is None or caller == "bad":
                    expected = 401
                else:
                    expected = allowed if rank >= ROLES.index(role) else 403
                if answer.status_code != expected:
                    failures.append(f"{caller:8} {method:6} {path}: {answer.status_code} (expected {expected}) "
                                    f"{answer.text[:200]}")
                elif expected in (401, 403):
                    problem = answer.json()
                    assert answer.headers["content-type"] == "application/problem+json"
                    assert problem["status"] == expected and problem["detail"]
    assert failures == []


def test_a_revoked_token_is_refused_at_once(matrix_server):
    server, tokens = matrix_server
    with server.client(tokens["viewer"]) as client:
        assert client.get("/api/v1/tasks").status_code == 200
        done = taskmon("token", "revoke", "viewer", db_url=server_db(server))
        assert done.returncode == 0, done.stderr
        answer = client.get("/api/v1/tasks")
        assert answer.status_code == 401
        assert answer.json()["detail"] == "the token is not valid (unknown or revoked)"
    # and a token revoked through the API, by an admin
    with server.client(tokens["admin"]) as admin:
        made = admin.post("/api/v1/tokens", json={"name": "short-lived", "role": "operator"})
        assert made.status_code == 201
        short = made.json()["token"]
        with server.client(short) as client:
            assert client.get("/api/v1/stats").status_code == 200
            assert admin.delete("/api/v1/tokens/short-lived").status_code == 204
            assert client.get("/api/v1/stats").status_code == 401


def server_db(server) -> str:
    return server.proc.args[server.proc.args.index("--db") + 1]


def test_repeated_bad_tokens_from_one_address_get_429_while_a_good_token_still_works(sqlite_store, start_api):
    tokens = role_tokens(sqlite_store)
    server = start_api(sqlite_store, "--bad-token-limit", "3/minute")
    with server.client("tm_guess") as guesser:
        statuses = [guesser.get("/api/v1/tasks").status_code for _ in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
        refused = guesser.get("/api/v1/tasks")
        assert refused.headers["content-type"] == "application/problem+json"
        assert 1 <= int(refused.headers["retry-after"]) <= 60
    with server.client(tokens["viewer"]) as client:
        assert client.get("/api/v1/tasks").status_code == 200


def test_every_mutating_call_is_in_the_audit_log_with_who_what_target_and_result(matrix_server):
    import json

    server, tokens = matrix_server
    with server.client(tokens["operator"]) as operator, server.client(tokens["viewer"]) as viewer:
        assert operator.post(f"/api/v1/schedule/{ENTRY}/disable").status_code == 200
        assert operator.post("/api/v1/tasks/gone/replay").status_code == 404
        assert viewer.post(f"/api/v1/schedule/{ENTRY}/enable").status_code == 403  # refused: nothing was done
        entries = viewer.get("/api/v1/audit", params={"actor": "operator"}).json()
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("operator", "task.replay", "gone"), ("operator", "schedule.disable", ENTRY)]
    replay, disable = (json.loads(e["detail"]) for e in entries)
    assert replay["result"] == "404: no task run with id 'gone' in the history"
    assert disable["result"] == "ok" and disable["enabled"] is False and disable["role"] == "operator"
