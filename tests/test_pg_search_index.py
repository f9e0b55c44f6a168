"""PostgreSQL's search index beside task_runs: the same rows as a scan, however far behind it is."""
import time
from datetime import timedelta

import pytest
from sqlalchemy import text, update

from monitor.search_indexer import PgSearchIndexer
from storage import pg_search_index
from storage.db import make_engine
from storage.schema import task_runs
from tests.conftest import replay
from tests.history_data import insert, now_utc, run
from tests.test_history_search import expected, random_history
from tests.test_search_index import TEXTS as SQLITE_TEXTS
from tests.test_search_index import assert_searches_see_now, change_add_and_delete, search

TEXTS = [*SQLITE_TEXTS, "a\nb"]
LATER = now_utc() + timedelta(days=1)  # as if the index ran a day on: every run written so far is settled


@pytest.fixture
def history(request, pg_url):
    engine = make_engine(pg_url)
    replay(engine, request.getfixturevalue("pg_migration"))
    rows = random_history(now_utc())
    for i, r in enumerate(rows[:12]):
        r["result"] = ["'a*p'", "'[x]'", "'why?'"][i % 3]
    insert(engine, rows)
    yield engine, rows
    engine.dispose()


def catch_up(engine, now=LATER, limit=50) -> None:
    with engine.begin() as conn:
        while pg_search_index.index_batch(conn, limit=limit, now=now):
            pass
        assert pg_search_index.caught_up(conn, now=now)


def answered_by_index(engine, q) -> bool:
    with engine.connect() as conn:
        return pg_search_index.candidates_sql(q, conn, "k") is not None


def entries(engine) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(text("SELECT task_id, body FROM run_search")).all())


def test_the_index_is_off_the_writer_s_table_and_on_its_own(history):
    engine, _ = history
    with engine.connect() as conn:
        on_runs = conn.execute(text("SELECT indexname FROM pg_indexes WHERE tablename = 'task_runs' "
                                    "AND indexdef LIKE '%gin%'")).scalars().all()
        assert on_runs == []
        assert pg_search_index.has_index(conn)  # pg_trgm ships with PostgreSQL's contrib package


@pytest.mark.parametrize("q", TEXTS)
def test_searches_through_the_index_find_what_the_scan_finds(history, q):
    engine, rows = history
    before = search(engine, q)  # never indexed: a scan
    assert not answered_by_index(engine, q)
    catch_up(engine)
    assert search(engine, q) == before == expected(rows, q)
    assert answered_by_index(engine, q) == (len(q) >= pg_search_index.MIN_TEXT)


def test_a_run_changed_added_or_deleted_since_it_was_indexed_is_found_as_it_is_now(history):
    engine, rows = history
    catch_up(engine)
    assert len(entries(engine)) == len(rows)
    changed, zebras = change_add_and_delete(engine, rows)
    assert rows[1]["task_id"] not in entries(engine)  # the clean-up's delete took its entry along
    assert answered_by_index(engine, "zebra")
    assert_searches_see_now(engine, rows, changed, zebras)
    catch_up(engine)
    got = entries(engine)
    assert len(got) == len(rows) + 1 and "zebra crossing" in got[rows[0]["task_id"]]
    assert sorted(search(engine, "zebra")) == zebras


def test_the_index_reads_runs_only_once_they_are_older_than_its_slack(history):
    engine, rows = history
    catch_up(engine)
    newest = max(r["updated_at"] for r in rows)
    insert(engine, [run("fresh", "job.fresh", "SUCCESS", newest, args="('fresh fig',)",
                        updated_at=LATER + timedelta(minutes=5))])
    with engine.begin() as conn:
        assert pg_search_index.index_batch(conn, now=LATER + timedelta(minutes=5)) == 0  # written 0 s "ago"
        assert not pg_search_index.caught_up(conn, now=LATER + timedelta(minutes=6))
        assert pg_search_index.index_batch(conn, now=LATER + timedelta(minutes=6)) == 1
    assert search(engine, "fresh fig") == ["fresh"] and "fresh" in entries(engine)


def test_an_index_far_behind_the_history_is_not_asked(history, monkeypatch):
    engine, rows = history
    catch_up(engine)
    monkeypatch.setattr(pg_search_index, "MAX_UNINDEXED", 5)
    with engine.begin() as conn:
        conn.execute(update(task_runs).values(updated_at=LATER + timedelta(minutes=1)))
    assert not answered_by_index(engine, "alpha")
    assert search(engine, "alpha") == expected(rows, "alpha")


def test_one_server_keeps_the_index_and_follows_new_runs(history, monkeypatch):
    engine, rows = history
    monkeypatch.setattr(pg_search_index, "MARK_SLACK", timedelta(seconds=0))
    first, second = PgSearchIndexer(engine), PgSearchIndexer(engine)
    assert first.prepare()
    assert not second.prepare()  # another server keeps it
    first.start()
    try:
        # After every run of the history (some finish seconds after the fixture's clock): with no
        # slack, a mark moved past one of those before new1 is written would leave new1 behind it.
        now = max(now_utc(), max(r["updated_at"] for r in rows) + timedelta(microseconds=1))
        insert(engine, [run("new1", "job.new", "SUCCESS", now - timedelta(seconds=30), args="('kumquat',)",
                            updated_at=now),
                        run("new2", "job.new", "SUCCESS", now, args="('quince',)",
                            updated_at=now + timedelta(minutes=5))])  # stamped by a clock 5 minutes fast
        settled = {r["task_id"] for r in rows} | {"new1"}
        deadline = time.monotonic() + 30
        indexed: set = set()
        while not settled <= indexed and time.monotonic() < deadline:
            time.sleep(0.1)
            indexed = set(entries(engine))
        assert settled <= indexed and "new2" not in indexed
        assert search(engine, "kumquat") == ["new1"] and search(engine, "quince") == ["new2"]
        assert answered_by_index(engine, "kumquat")
    finally:
        first.stop()
        second.stop()
    third = PgSearchIndexer(engine)
    assert third.prepare()  # the first one's stop gave the lock back
    third.stop()
