"""Text search and keyset pages of the history, the same rows on SQLite and PostgreSQL."""
import random
from datetime import timedelta

import pytest
from sqlalchemy import delete, update

from storage.history import BadCursor, RunFilter, list_runs, page_runs
from storage.schema import task_runs
from storage.search import SEARCHED
from tests.history_data import insert, now_utc, run

WORDS = ["alpha", "Beta", "gamma_1", "50%", "back\\slash", 'quo"te', "naïve", "用户", "card declined", "x"]
NAMES = ["billing.charge", "mail.send", "reports.daily", "user.sync"]
STATES = ["SUCCESS", "FAILURE", "STARTED", "PENDING"]


def random_history(now, count=240, seed=7):
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        pick = lambda: rng.choice(WORDS) if rng.random() < 0.5 else None  # noqa: E731
        state = rng.choice(STATES)
        rows.append(run(
            f"{rng.choice('abc')}{i:04d}-{rng.randrange(16**4):04x}", rng.choice(NAMES), state,
            # some runs share a seen_at, so the task id must break ties
            now - timedelta(seconds=rng.randrange(count // 2)),
            wait=None if state == "PENDING" else rng.choice([0.1, 0.5, 1.0]),
            runtime=None if state in ("PENDING", "STARTED") else rng.choice([0.25, 1.0, 2.5, 7.0]),
            args=f"({pick()!r}, {i})", kwargs=f"{{'user': {pick()!r}}}", result=pick(), exception=pick(),
        ))
    return rows


def expected(rows, text=None, name=None, state=None, sort="seen"):
    """What the history should answer, computed in Python."""
    column = {"seen": "seen_at", "started": "started_at", "runtime": "runtime"}[sort]

    def hit(r):
        if name and r["name"] != name or state and r["state"] != state or r[column] is None:
            return False
        return not text or r["task_id"].startswith(text) or any(text in (r.get(c) or "") for c in SEARCHED)

    chosen = sorted((r for r in rows if hit(r)), key=lambda r: (r[column], r["task_id"]), reverse=True)
    return [r["task_id"] for r in chosen]


@pytest.fixture
def history(engine):
    rows = random_history(now_utc())
    insert(engine, rows)
    return engine, rows


def ids(runs):
    return [r["task_id"] for r in runs]


@pytest.mark.parametrize("text", ["alpha", "Beta", "beta", "ma_1", "50%", "%", "_", "h\\s", 'o"t', "ïve", "用户",
                                  "card dec", "a00", "b0012-", "x", "al", "'user': None", "nothing here"])
def test_search_matches_a_task_id_prefix_or_text_in_the_searched_columns(history, text):
    engine, rows = history
    with engine.connect() as conn:
        got = ids(list_runs(conn, RunFilter(search=text), limit=1000))
    assert got == expected(rows, text)


def test_search_combines_with_name_state_and_glob(history):
    engine, rows = history
    with engine.connect() as conn:
        got = ids(list_runs(conn, RunFilter(search="alpha", name="mail.send", states=("FAILURE",)), limit=1000))
        glob = ids(list_runs(conn, RunFilter(search="alpha", name="mail.*"), limit=1000))
    assert got == expected(rows, "alpha", name="mail.send", state="FAILURE")
    assert glob == expected(rows, "alpha", name="mail.send")


def test_search_follows_updates_and_deletes(engine):
    now = now_utc()
    insert(engine, [run("u1", "job.a", "STARTED", now, args="('first',)")])
    with engine.begin() as conn:
        conn.execute(update(task_runs).where(task_runs.c.task_id == "u1").values(args="('second',)", result="'zebra'"))
    with engine.connect() as conn:
        assert ids(list_runs(conn, RunFilter(search="first"))) == []
        assert ids(list_runs(conn, RunFilter(search="second"))) == ["u1"]
        assert ids(list_runs(conn, RunFilter(search="zebra"))) == ["u1"]
    with engine.begin() as conn:
        conn.execute(delete(task_runs).where(task_runs.c.task_id == "u1"))
    with engine.connect() as conn:
        assert ids(list_runs(conn, RunFilter(search="second"))) == []


@pytest.mark.parametrize("sort", ["seen", "started", "runtime"])
@pytest.mark.parametrize("f, kw", [(RunFilter(), {}), (RunFilter(search="a"), {"text": "a"}),
                                   (RunFilter(name="user.sync", states=("SUCCESS",)),
                                    {"name": "user.sync", "state": "SUCCESS"})])
def test_pages_walk_every_matching_run_once_in_order(history, sort, f, kw):
    engine, rows = history
    seen, cursor, pages = [], None, 0
    with engine.connect() as conn:
        while True:
            runs, cursor = page_runs(conn, f, limit=17, sort=sort, cursor=cursor)
            assert len(runs) <= 17
            seen += ids(runs)
            pages += 1
            if cursor is None:
                break
            assert len(runs) == 17
    assert seen == expected(rows, sort=sort, **kw)
    assert pages == len(seen) // 17 + 1


def test_a_cursor_from_another_sort_or_made_up_is_refused(history):
    engine, _ = history
    with engine.connect() as conn:
        _, cursor = page_runs(conn, RunFilter(), limit=5, sort="seen")
        for bad, sort in ((cursor, "runtime"), ("bm90LWEtY3Vyc29y", "seen"), ("%%%", "seen"), (cursor[:-3], "seen")):
            with pytest.raises(BadCursor, match="start again without a cursor"):
                list_runs(conn, RunFilter(), sort=sort, cursor=bad)


def test_the_search_has_its_index_on_postgresql_and_no_writer_trigger_on_sqlite(engine):
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            found = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'trigger'").scalars().all()
            assert [t for t in found if "fts" in t] == []
        else:  # pg_trgm ships with PostgreSQL's contrib package, installed on the test server
            found = conn.exec_driver_sql("SELECT indexname FROM pg_indexes WHERE tablename = 'run_search'").scalars().all()
            assert "ix_run_search_trgm" in found


def test_a_search_finds_the_newest_matches_beyond_the_runs_sqlite_reads_first(engine):
    """More runs than SQLite's first newest-first window: a rare text matches only runs older than
    the window (and one newer), a common one fills its page within the window."""
    from storage.history import SEARCH_WINDOW
    from storage.runs import upsert_runs

    now = now_utc()
    count = SEARCH_WINDOW + 1500
    rows = [run(f"r{i:05d}", NAMES[i % len(NAMES)], STATES[i % 2], now - timedelta(seconds=i),
                runtime=float(i % 7), args=f"({'needle' if i in (3, count - 3, count - 2, count - 1) else 'hay'}, "
                                           f"{'common' if i % 10 == 0 else 'plain'})")
            for i in range(count)]
    with engine.begin() as conn:
        upsert_runs(conn, rows)
    with engine.connect() as conn:
        for text, sort in (("needle", "seen"), ("needle", "runtime"), ("common", "seen"), ("common", "runtime")):
            got, cursor = page_runs(conn, RunFilter(search=text), limit=50, sort=sort)
            while cursor:
                more, cursor = page_runs(conn, RunFilter(search=text), limit=50, sort=sort, cursor=cursor)
                got += more
            assert ids(got) == expected(rows, text, sort=sort), (text, sort)
        newest = list_runs(conn, RunFilter(search="needle", name=NAMES[3]), limit=2)
        assert ids(newest) == expected(rows, "needle", name=NAMES[3])[:2]
