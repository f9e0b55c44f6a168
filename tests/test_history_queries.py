"""The read side of the history on SQLite and PostgreSQL: listings, one run's workflow, tail, workers."""
from datetime import timedelta

import pytest

from monitor.commands.tail import follow
from storage.history import RunFilter, changed_since, glob_to_regex, known_queues, list_runs, run_detail, task_names
from storage.merge import CELERY_STATES, STATE_RANK, TASKMON_STATES
from storage.runs import upsert_runs
from storage.worker_status import list_workers
from tests.history_data import insert, load_sample, now_utc, run


@pytest.fixture
def sample(engine):
    now = now_utc()
    load_sample(engine, now)
    return engine, now


def ids(runs):
    return [r["task_id"] for r in runs]


def test_history_is_newest_first_and_limited(sample):
    engine, _ = sample
    with engine.connect() as conn:
        assert ids(list_runs(conn, RunFilter(), limit=3)) == ["r06", "r04", "r03"]
        assert ids(list_runs(conn)) == ["r06", "r04", "r03", "r02", "r08", "r07", "r01", "r05"]


@pytest.mark.parametrize("f, expected", [
    (RunFilter(name="mail.send"), ["r06", "r08", "r07", "r05"]),
    (RunFilter(name="re*"), ["r02", "r01"]),
    (RunFilter(name="*.[cd]*"), ["r04", "r03", "r02", "r01"]),
    (RunFilter(name="*.[!cd]*"), ["r06", "r08", "r07", "r05"]),
    (RunFilter(name="mail.sen?"), ["r06", "r08", "r07", "r05"]),
    (RunFilter(name="MAIL.*"), []),  # globs are case-sensitive on both databases
    (RunFilter(name="nothing*"), []),
    (RunFilter(states=("failure",)), ["r02", "r08"]),
    (RunFilter(failed=True), ["r02", "r08"]),
    (RunFilter(states=("SUCCESS", "RETRY")), ["r04", "r03", "r07", "r01"]),
    (RunFilter(name="*", states=("STARTED", "PENDING")), ["r06", "r05"]),
    (RunFilter(worker="celery@b"), ["r04", "r02", "r05"]),
    (RunFilter(queue="mail"), ["r06", "r08", "r07", "r05"]),
])
def test_history_filters(sample, f, expected):
    engine, _ = sample
    with engine.connect() as conn:
        assert ids(list_runs(conn, f)) == expected


def test_history_time_window_is_since_inclusive_until_exclusive(sample):
    engine, now = sample
    with engine.connect() as conn:
        window = RunFilter(since=now - timedelta(minutes=49), until=now - timedelta(minutes=20))
        assert ids(list_runs(conn, window)) == ["r03", "r02", "r08", "r07"]


def test_glob_over_many_names_gives_the_same_runs_as_a_plain_scan(engine):
    now = now_utc()
    insert(engine, [run(f"n{i:02d}", f"job.n{i:02d}", "SUCCESS" if i % 3 else "FAILURE", now - timedelta(minutes=i),
                        runtime=1.0) for i in range(40)])
    with engine.connect() as conn:
        assert len(task_names(conn, "job.*")) == 40  # more names than list_runs merges: one scan instead
        assert ids(list_runs(conn, RunFilter(name="job.*"), limit=5)) == ["n00", "n01", "n02", "n03", "n04"]
        assert ids(list_runs(conn, RunFilter(name="job.n1?", failed=True))) == ["n12", "n15", "n18"]


def test_glob_to_regex():
    assert glob_to_regex("a.b*") == r"^a\.b.*$"
    assert glob_to_regex("x?[!ab]") == "^x.[^ab]$"
    assert glob_to_regex("[") == r"^\[$"


def test_task_names_and_known_queues(sample):
    engine, _ = sample
    with engine.connect() as conn:
        assert task_names(conn) == ["billing.charge", "mail.send", "reports.daily"]
        assert task_names(conn, "*.d*") == ["reports.daily"]
        assert known_queues(conn) == ["celery", "mail", "reports"]


def test_run_detail_has_every_field_timeline_and_workflow(sample):
    engine, now = sample
    with engine.connect() as conn:
        d = run_detail(conn, "r07")
    assert d["run"]["args"] is None and d["run"]["state"] == "SUCCESS"
    assert [s["event"] for s in d["timeline"]] == ["sent", "received", "started", "finished"]
    assert [s["after"] for s in d["timeline"]] == [None, 0.5, 0.0, 0.25]
    assert d["parent"]["task_id"] == "r01" and ids(d["ancestors"]) == ["r01"]
    assert d["root"]["task_id"] == "r01" and d["workflow_size"] == 3
    assert ids(d["children"]) == ["r08"] and d["missing_parent"] is None


def test_a_retried_run_shows_each_attempt_and_only_the_latest_one_s_times(sample):
    engine, now = sample
    with engine.connect() as conn:
        retried, once = run_detail(conn, "r04"), run_detail(conn, "r07")
    # r04 retried twice and is waiting in RETRY: attempts 1 and 2 ended in a retry, 3 is the row's.
    assert [(a["number"], a["outcome"], a["known"]) for a in retried["attempts"]] == [
        (1, "RETRY", False), (2, "RETRY", False), (3, "RETRY", True)]
    assert retried["attempts"][0]["first_seen"] == retried["run"]["seen_at"]
    assert retried["attempts"][1]["steps"] == [] and retried["attempts"][2]["steps"] == retried["timeline"]
    assert retried["attempts"][2]["exception"] == "TimeoutError('gateway')"
    assert [(a["number"], a["outcome"], a["known"]) for a in once["attempts"]] == [(1, "SUCCESS", True)]


def test_run_detail_of_a_grandchild_walks_up_to_the_root(sample):
    engine, _ = sample
    with engine.connect() as conn:
        d = run_detail(conn, "r08")
    assert ids(d["ancestors"]) == ["r07", "r01"] and d["root"]["task_id"] == "r01" and d["children"] == []


def test_run_detail_with_a_parent_not_stored_and_a_cycle(engine):
    now = now_utc()
    insert(engine, [run("x1", "a", "SUCCESS", now, parent_id="gone", root_id="gone"),
                    run("c1", "a", "SUCCESS", now, parent_id="c2"), run("c2", "a", "SUCCESS", now, parent_id="c1")])
    with engine.connect() as conn:
        orphan = run_detail(conn, "x1")
        cycle = run_detail(conn, "c1")
        assert run_detail(conn, "nope") is None
    assert orphan["missing_parent"] == "gone" and orphan["root"] is None and orphan["workflow_size"] == 1
    assert ids(cycle["ancestors"]) == ["c2"] and ids(cycle["children"]) == ["c2"]


def test_changed_since_orders_by_write_time(sample):
    engine, now = sample
    with engine.connect() as conn:
        rows = changed_since(conn, RunFilter(), now - timedelta(minutes=30))
    assert ids(rows) == ["r03", "r04", "r06"]


def test_follow_prints_the_newest_then_new_and_changed_runs_once(sample):
    engine, now = sample
    polls = follow(engine, RunFilter(name="mail.*"), initial=2, sleep=lambda s: None)
    assert ids(next(polls)) == ["r08", "r06"]  # oldest of the two newest first
    assert next(polls) == []  # nothing written since
    later = now + timedelta(seconds=5)
    with engine.begin() as conn:
        upsert_runs(conn, [run("r06", "mail.send", "STARTED", now - timedelta(minutes=1), worker="celery@a",
                               updated_at=later)])
        upsert_runs(conn, [run("r09", "mail.send", "PENDING", later, wait=None)])
        upsert_runs(conn, [run("r10", "billing.charge", "PENDING", later, wait=None)])  # filtered out
    changed = next(polls)
    assert ids(changed) == ["r06", "r09"] and changed[0]["state"] == "STARTED"
    assert next(polls) == []


def test_follow_stops_after_max_polls_and_on_an_empty_database(engine):
    assert list(follow(engine, max_polls=2, sleep=lambda s: None)) == [[], [], []]


def test_workers_come_with_their_stored_status_and_heartbeat_age(sample):
    engine, now = sample
    with engine.connect() as conn:
        rows = list_workers(conn, now)
    assert [(w["hostname"], w["status"]) for w in rows] == [("celery@a", "online"), ("celery@b", "online"),
                                                           ("celery@c", "offline")]
    assert rows[0]["heartbeat_age"] == pytest.approx(1.0) and rows[0]["active"] == 1 and rows[0]["processed"] == 120
    assert rows[1]["heartbeat_age"] == pytest.approx(600.0) and rows[1]["freq"] == 2.0


def test_the_states_listed_to_users_are_the_states_the_merge_ranks():
    assert sorted(CELERY_STATES + TASKMON_STATES) == sorted(STATE_RANK)


# -- the same queries on a plain sqlite3 connection (what `taskmon history` and `show` use) ----------

FILTERS = [RunFilter(), RunFilter(name="mail.send"), RunFilter(name="*.[!cd]*"), RunFilter(failed=True),
           RunFilter(states=("SUCCESS", "RETRY")), RunFilter(name="*", states=("STARTED", "PENDING")),
           RunFilter(worker="celery@b", queue="celery"), RunFilter(since=now_utc() - timedelta(minutes=49))]


def test_a_plain_sqlite3_connection_reads_the_same_rows_as_sqlalchemy(sqlite_url):
    from storage.db import make_engine, upgrade
    from storage.store import open_history, sqlite_file
    from tests.history_data import sample_history

    engine = make_engine(sqlite_url)
    upgrade(engine)
    now = now_utc()
    rows = sample_history(now) + [run("t1", "odd", "SUCCESS", now, truncated=True, redelivered=True,
                                      stuck_at=now, eta=now, received_attempt=1, replay_of="r02")]
    insert(engine, rows)
    plain, revision = open_history(sqlite_file(sqlite_url))
    try:
        with engine.connect() as conn:
            for f in FILTERS:
                assert list_runs(plain, f) == list_runs(conn, f), f
            for task_id in [r["task_id"] for r in rows] + ["nope"]:
                assert run_detail(plain, task_id) == run_detail(conn, task_id), task_id
            assert changed_since(plain, RunFilter(), now - timedelta(hours=1)) == \
                changed_since(conn, RunFilter(), now - timedelta(hours=1))
            assert task_names(plain, "*.*") == task_names(conn, "*.*")
            assert known_queues(plain) == known_queues(conn)
        detail = run_detail(plain, "t1")["run"]
        assert detail["truncated"] is True and detail["redelivered"] is True
        assert detail["stuck_at"] == now and detail["stuck_at"].tzinfo is not None
    finally:
        plain.close()
        engine.dispose()


def test_the_column_lists_of_the_text_queries_are_the_schemas():
    from sqlalchemy import Boolean

    from storage.history import BOOL_FIELDS, RUN_FIELDS, TIME_FIELDS
    from storage.schema import task_runs
    from storage.types import UTCDateTime

    assert RUN_FIELDS == tuple(task_runs.c.keys())
    assert set(TIME_FIELDS) == {c.name for c in task_runs.c if isinstance(c.type, UTCDateTime)}
    assert set(BOOL_FIELDS) == {c.name for c in task_runs.c if isinstance(c.type, Boolean)}
