"""GET /api/v1/tasks with q, sort and cursor against a real `taskmon serve`, on SQLite and PostgreSQL."""
from __future__ import annotations

from tests.api_fixtures import start_api  # noqa: F401 - fixture
from tests.api_helpers import create_token
from tests.history_data import insert, now_utc
from tests.test_history_search import expected, random_history


def test_search_sort_and_cursor_pages_through_the_api(engine, db_url, start_api):  # noqa: F811
    rows = random_history(now_utc(), count=120)
    insert(engine, rows)
    token = create_token(db_url, "reader", "viewer")
    server = start_api(db_url, "--timezone", "UTC")
    with server.client(token) as client:
        got, cursor = [], None
        while True:
            params = {"q": "a", "sort": "runtime", "limit": 7, **({"cursor": cursor} if cursor else {})}
            page = client.get("/api/v1/tasks", params=params)
            assert page.status_code == 200, page.text
            body = page.json()
            got += [r["task_id"] for r in body["results"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert got == expected(rows, "a", sort="runtime")

        found = client.get("/api/v1/tasks", params={"q": "gamma_1", "name": "mail.send", "limit": 1000}).json()
        assert [r["task_id"] for r in found["results"]] == expected(rows, "gamma_1", name="mail.send")

        bad = client.get("/api/v1/tasks", params={"cursor": "bm90LWEtY3Vyc29y"})
        assert bad.status_code == 400 and "start again without a cursor" in bad.json()["detail"]
        assert client.get("/api/v1/tasks", params={"sort": "nonsense"}).status_code in (400, 422)
