"""SQLite's search index beside the history: the same rows as a scan, however far behind it is."""
import sqlite3
import time
from datetime import timedelta

import pytest
from sqlalchemy import delete, update

from monitor.search_indexer import SearchIndexer
from storage import history as history_module
from storage import search_index
from storage.db import make_engine
from storage.history import RunFilter, list_runs
from storage.schema import task_runs
from tests.conftest import copy_history
from tests.history_data import insert, now_utc, run
from tests.test_history_search import expected, random_history

TEXTS = ["alpha", "Beta", "beta", "ma_1", "50%", "h\\s", 'o"t', "ïve", "用户", "card dec", "b0012-", "'user': None",
         "nothing here", "al", "x", "a*p", "[x", "?"]


@pytest.fixture
def history(tmp_path, migrated_sqlite, monkeypatch):
    """A SQLite history whose searches skip the newest-first window, so the index (or the scan) answers."""
    url = f"sqlite:///{tmp_path / 'taskmon.db'}"
    copy_history(migrated_sqlite, url)
    monkeypatch.setattr(history_module, "SEARCH_WINDOW", 0)
    engine = make_engine(url)
    rows = random_history(now_utc())
    for i, r in enumerate(rows[:12]):  # texts with GLOB's own characters
        r["result"] = ["'a*p'", "'[x]'", "'why?'"][i % 3]
    insert(engine, rows)
    yield engine, rows, str(tmp_path / "taskmon.db")
    engine.dispose()


LATER = now_utc() + timedelta(days=1)  # as if the index ran a day on: every run written so far is settled


def build_index(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    assert search_index.attach(conn, create=True)
    catch_up(conn)
    return conn


def catch_up(conn: sqlite3.Connection) -> None:
    while search_index.index_batch(conn, limit=50, now=LATER):
        pass
    assert search_index.caught_up(conn, now=LATER)


def search(engine, text):
    with engine.connect() as conn:
        return [r["task_id"] for r in list_runs(conn, RunFilter(search=text), limit=1000)]


def answered_by_index(engine, text) -> bool:
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        return search_index.candidates_sql(text, raw, "k") is not None


@pytest.mark.parametrize("text", TEXTS)
def test_searches_through_the_index_find_what_the_scan_finds(history, text):
    engine, rows, path = history
    before = search(engine, text)  # no index file yet: a scan
    build_index(path).close()
    engine.dispose()  # new connections attach the index
    assert search(engine, text) == before == expected(rows, text)
    assert answered_by_index(engine, text) == (len(text) >= search_index.MIN_TEXT)


def change_add_and_delete(engine, rows) -> tuple[dict, list[str]]:
    """After the index's mark: rows[0] changed to mention a zebra, rows[1] deleted, two zebra runs
    added (one seen a day ago, written just after the mark). The changed row and the zebras' ids."""
    newest = max(r["updated_at"] for r in rows)  # the index's mark
    with engine.begin() as conn:
        conn.execute(update(task_runs).where(task_runs.c.task_id == rows[0]["task_id"])
                     .values(args="('zebra crossing',)", result=None, exception=None, kwargs=None,
                             updated_at=newest + timedelta(seconds=30)))
        conn.execute(delete(task_runs).where(task_runs.c.task_id == rows[1]["task_id"]))
    insert(engine, [run("late1", "job.late", "SUCCESS", newest, args="('zebra crossing',)"),
                    run("late2", "job.late", "SUCCESS", newest - timedelta(days=1), args="('zebra crossing',)",
                        updated_at=newest + timedelta(microseconds=1))])
    changed = {**rows[0], "args": "('zebra crossing',)", "result": None, "exception": None, "kwargs": None}
    return changed, sorted([rows[0]["task_id"], "late1", "late2"])


def assert_searches_see_now(engine, rows, changed, zebras) -> None:
    """Searches after change_add_and_delete answer from the history as it is now."""
    assert sorted(search(engine, "zebra")) == zebras
    for text in ("alpha", "Beta", "用户", "a*p"):
        assert search(engine, text) == expected(rows[2:] + [changed], text)


def test_a_run_changed_added_or_deleted_since_it_was_indexed_is_found_as_it_is_now(history):
    engine, rows, path = history
    index = build_index(path)
    engine.dispose()
    changed, zebras = change_add_and_delete(engine, rows)
    assert answered_by_index(engine, "zebra")
    assert_searches_see_now(engine, rows, changed, zebras)
    # caught up again and the deleted run's entry purged: the same answers, one entry per run
    catch_up(index)
    after = ""
    while after is not None:
        _, after = search_index.purge_batch(index, after, limit=40)
    docs = index.execute("SELECT count(*) FROM search.run_docs").fetchone()[0]
    assert docs == index.execute("SELECT count(*) FROM search.run_text").fetchone()[0] == len(rows) + 1
    assert sorted(search(engine, "zebra")) == zebras
    index.close()


def test_the_index_reads_runs_only_once_they_are_older_than_its_slack(history):
    engine, rows, path = history
    index = build_index(path)
    newest = max(r["updated_at"] for r in rows)
    insert(engine, [run("fresh", "job.fresh", "SUCCESS", newest, args="('fresh fig',)",
                        updated_at=newest + timedelta(minutes=5))])
    assert search_index.index_batch(index, now=newest + timedelta(minutes=5)) == 0  # written 0 s "ago"
    assert not search_index.caught_up(index, now=newest + timedelta(minutes=6))
    assert search_index.index_batch(index, now=newest + timedelta(minutes=6)) == 1
    engine.dispose()
    assert search(engine, "fresh fig") == ["fresh"] and answered_by_index(engine, "fresh fig")
    index.close()


def test_an_index_far_behind_the_history_is_not_asked(history, monkeypatch):
    engine, rows, path = history
    build_index(path).close()
    engine.dispose()
    monkeypatch.setattr(search_index, "MAX_UNINDEXED", 5)
    with engine.begin() as conn:
        conn.execute(update(task_runs).values(updated_at=now_utc() + timedelta(minutes=1)))
    assert not answered_by_index(engine, "alpha")
    assert search(engine, "alpha") == expected(rows, "alpha")


def test_a_broken_index_file_leaves_searches_to_the_scan(history):
    engine, rows, path = history
    search_index.index_path(path).write_bytes(b"not a database at all" * 100)
    engine.dispose()
    assert not answered_by_index(engine, "alpha")
    assert search(engine, "alpha") == expected(rows, "alpha")


def test_one_indexer_keeps_the_index_and_follows_new_runs(history, monkeypatch):
    engine, rows, path = history
    monkeypatch.setattr(search_index, "MARK_SLACK", timedelta(seconds=0))
    first, second = SearchIndexer(path), SearchIndexer(path)
    assert first.prepare()
    assert not second.prepare()  # another server keeps it
    first.start()
    try:
        engine.dispose()
        now = now_utc()
        insert(engine, [run("new1", "job.new", "SUCCESS", now - timedelta(seconds=30), args="('kumquat',)",
                            updated_at=now),
                        run("new2", "job.new", "SUCCESS", now, args="('quince',)",
                            updated_at=now + timedelta(minutes=5))])  # stamped by a clock 5 minutes fast
        settled = {r["task_id"] for r in rows if r["updated_at"] <= now} | {"new1"}
        deadline = time.monotonic() + 20
        with engine.connect() as conn:
            raw = conn.connection.driver_connection
            indexed: set = set()
            while not settled <= indexed and time.monotonic() < deadline:
                time.sleep(0.1)
                indexed = {r[0] for r in raw.execute("SELECT task_id FROM search.run_docs")}
        assert settled <= indexed and "new2" not in indexed
        assert search(engine, "kumquat") == ["new1"] and search(engine, "quince") == ["new2"]
        assert answered_by_index(engine, "kumquat")
    finally:
        first.stop()
        second.stop()
