"""Every recipe in docs/sql-recipes.md, read from the file, runs on SQLite and PostgreSQL with known results."""
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from storage.rollups import BOUNDS, bucket_of
from storage.runs import upsert_workers
from tests.history_data import insert, reporting_history
from tests.services import REPO

RECIPES = REPO / "docs" / "sql-recipes.md"


def recipes() -> dict[str, dict[str, str]]:
    """{heading: {"sql" | "sqlite" | "postgresql": query}} for every `## ` section with SQL in it."""
    out = {}
    for section in re.split(r"^## ", RECIPES.read_text(), flags=re.M)[1:]:
        title = section.splitlines()[0].strip()
        blocks = re.findall(r"```sql(?: (sqlite|postgresql))?\n(.*?)```", section, re.S)
        if blocks:
            out[title] = {dialect or "sql": query for dialect, query in blocks}
    return out


def query_for(recipe: dict[str, str], dialect: str) -> str:
    return recipe.get("sql") or recipe[dialect]


def normalize(value):
    """Plain comparable values: floats, and times as UTC 'YYYY-MM-DD HH:MM:SS' whatever the driver returns."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?", value):
        return value[:19]
    if hasattr(value, "isoformat"):  # a date
        return value.isoformat()
    return value


def expected_results(today: datetime) -> dict[str, list[tuple]]:
    day = lambda n: (today - timedelta(days=n)).strftime("%Y-%m-%d")  # noqa: E731
    hour = lambda n, h: f"{day(n)} {h:02d}:00"  # noqa: E731
    a, b, c = "reports.daily", "billing.charge", "mail.send"
    old_finish = (today - timedelta(days=40, hours=-5)).strftime("%Y-%m-%d %H:00:00")
    return {
        "Failure rate per task per day": [
            (day(2), b, 2, 0, 0.0), (day(2), c, 1, 1, 1.0), (day(2), a, 2, 1, 0.5),
            (day(1), b, 2, 2, 1.0), (day(1), c, 3, 0, 0.0), (day(1), a, 1, 0, 0.0),
            (day(0), c, 1, 0, None),
        ],
        "Slowest tasks": [(a, 3, 20.0, 30.0, 29.0), (b, 4, 2.5, 4.0, 3.85), (c, 2, 0.38, 0.5, 0.49)],
        "Slowest single runs": [("o1", a, "celery@w1", 99.0), ("a3", a, "celery@w2", 30.0), ("a2", a, "celery@w1", 20.0),
                                ("a1", a, "celery@w1", 10.0), ("b4", b, "celery@w2", 4.0)],
        "Queue-wait trend": [
            (hour(2, 1), "celery", 2, 1.0, 1.5), (hour(2, 1), "mail", 1, 2.0, 2.0), (hour(2, 1), "reports", 1, 1.0, 1.0),
            (hour(2, 2), "reports", 1, 3.0, 3.0),
            (hour(1, 1), "celery", 1, 1.5, 1.5), (hour(1, 1), "mail", 1, 0.5, 0.5), (hour(1, 1), "reports", 1, 2.0, 2.0),
            (hour(1, 3), "celery", 1, 0.5, 0.5), (hour(1, 10), "mail", 1, 1.0, 1.0),
        ],
        "Retries per task": [(b, 4, 2, 3, 2), (c, 5, 1, 3, 3)],
        "Worker load": [("celery@w2", "offline", 5, 1, 38.0), ("celery@w1", "online", 5, 3, 32.75)],
        "Top exceptions": [
            ("TimeoutError", 2, 1, f"{day(1)} 03:20:04"), ("ValueError", 2, 1, f"{day(2)} 02:00:23"),
            ("SMTPError", 1, 1, f"{day(2)} 01:15:02"),
        ],
        "Tasks that never finished": [("c3", c, "STARTED", "celery@w2", f"{day(1)} 10:00:00")],
        "Hourly throughput": [
            (f"{day(1)} 03:00:00", 1, 1), (f"{day(1)} 01:00:00", 3, 1), (f"{day(2)} 02:00:00", 1, 1),
            (f"{day(2)} 01:00:00", 4, 1), (old_finish, 1, 1),
        ],
        **expected_from_rollups(today),
    }


def expected_from_rollups(today: datetime) -> dict[str, list[tuple]]:
    """The rollup recipes' results computed in Python from the runs themselves (weeks and the
    latest run's hour depend on today's date)."""
    runs = reporting_history(today)
    hours: dict[str, list[int]] = {}
    for r in runs:
        if r["seen_at"] >= today - timedelta(days=30):
            h = hours.setdefault(r["seen_at"].strftime("%Y-%m-%d %H:00:00"), [0, 0])
            h[0] += 1
            h[1] += r["state"] == "FAILURE"
    weeks: dict[tuple, list[float]] = {}
    for r in runs:
        if r.get("runtime") is not None:
            monday = (r["seen_at"] - timedelta(days=r["seen_at"].weekday())).strftime("%Y-%m-%d")
            weeks.setdefault((monday, r["name"]), []).append(r["runtime"])
    p95 = []
    for (week, name), values in sorted(weeks.items()):
        ranked = sorted(bucket_of(v) for v in values)
        i = ranked[-(-95 * len(values) // 100) - 1]  # the bucket of the ceil(0.95 n)-th runtime
        p95.append((week, name, len(values), BOUNDS[i] if i < len(BOUNDS) else None))
    day = lambda n: (today - timedelta(days=n)).strftime("%Y-%m-%d")  # noqa: E731
    a, b, c = "reports.daily", "billing.charge", "mail.send"
    return {
        "Throughput per hour for a month, from the rollups": [(h, n, f) for h, (n, f) in sorted(hours.items())],
        "Failure rate per task per day, from the rollups": [
            (day(2), b, 2, 0, 0.0), (day(2), c, 1, 1, 1.0), (day(2), a, 2, 1, 0.5),
            (day(1), b, 2, 2, 1.0), (day(1), c, 3, 0, 0.0), (day(1), a, 1, 0, 0.0),
            (day(0), c, 1, 0, None),
        ],
        "p95 runtime per week, from the histogram buckets": p95,
    }


@pytest.fixture
def reporting_db(engine):
    today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    insert(engine, reporting_history(today))
    with engine.begin() as conn:
        upsert_workers(conn, [
            {"hostname": "celery@w1", "status": "online", "last_heartbeat": today, "first_seen": today, "updated_at": today},
            {"hostname": "celery@w2", "status": "offline", "last_heartbeat": today, "first_seen": today, "updated_at": today},
        ])
    return engine, today


def test_the_file_has_every_kind_of_recipe_the_issue_asks_for():
    found = recipes()
    assert len(found) >= 8
    for title, variants in found.items():
        assert "sql" in variants or {"sqlite", "postgresql"} <= set(variants), title


def test_every_recipe_runs_with_the_expected_result(reporting_db):
    engine, today = reporting_db
    expected = expected_results(today)
    found = recipes()
    assert sorted(found) == sorted(expected)  # a new recipe needs its expected result here
    with engine.connect() as conn:
        for title, variants in found.items():
            rows = conn.exec_driver_sql(query_for(variants, engine.dialect.name)).all()
            got = [tuple(normalize(v) for v in row) for row in rows]
            assert got == expected[title], title
