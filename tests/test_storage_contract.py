"""The history store behaves the same on SQLite and PostgreSQL."""
import itertools
import random
from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from storage.db import current_revision, head_revision, make_engine, upgrade
from storage.runs import get_run, merge_run, upsert_runs, upsert_workers
from storage.schema import metadata, task_runs, workers
from storage.search import in_metadata

T0 = datetime(2026, 11, 23, 6, 0, 0, tzinfo=timezone.utc)


def run(task_id="t1", state="PENDING", at=T0, **fields):
    return {"task_id": task_id, "state": state, "state_at": at, "seen_at": at, "updated_at": at, **fields}


def test_upgrade_creates_tables_and_is_idempotent(db_url):
    engine = make_engine(db_url)
    assert current_revision(engine) is None
    assert upgrade(engine) == (None, head_revision())
    assert upgrade(engine) == (head_revision(), head_revision())
    assert {"task_runs", "workers"} <= set(inspect(engine).get_table_names())


def test_migrations_match_schema_module(engine):
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"include_object": in_metadata}), metadata)
    assert diff == []


def test_upsert_and_read_back_timezone_aware_utc(engine):
    shanghai = timezone(timedelta(hours=8))
    sent = datetime(2026, 11, 23, 14, 0, 0, 123456, tzinfo=shanghai)
    with engine.begin() as conn:
        upsert_runs(conn, [run("a", "PENDING", sent, name="sample.add", args="(1, 2)", sent_at=sent, queue="celery")])
        upsert_runs(conn, [run("a", "SUCCESS", sent + timedelta(seconds=3), started_at=sent + timedelta(seconds=1),
                               finished_at=sent + timedelta(seconds=3), runtime=2.0, result="3", worker="w1")])
    with engine.connect() as conn:
        row = get_run(conn, "a")
    assert row["state"] == "SUCCESS"
    assert row["name"] == "sample.add" and row["args"] == "(1, 2)" and row["result"] == "3"
    assert row["sent_at"] == datetime(2026, 11, 23, 6, 0, 0, 123456, tzinfo=timezone.utc)
    assert row["sent_at"].tzinfo is not None and row["sent_at"].utcoffset() == timedelta(0)
    assert row["queue_wait"] == pytest.approx(1.0)
    assert row["runtime"] == 2.0 and row["worker"] == "w1" and row["queue"] == "celery"


def test_naive_datetimes_are_refused(engine):
    with pytest.raises(Exception, match="naive datetime"):
        with engine.begin() as conn:
            upsert_runs(conn, [run("n", at=datetime(2026, 1, 1))])


def lifecycle(task_id="t"):
    """Partial rows as celery's events describe a task that retried once and then succeeded."""
    s = lambda n: T0 + timedelta(seconds=n)  # noqa: E731
    return [
        run(task_id, "PENDING", s(0), name="sample.flaky", args="(1,)", sent_at=s(0), queue="celery"),
        run(task_id, "RECEIVED", s(1), name="sample.flaky", args="(1,)", received_at=s(1), worker="w1"),
        run(task_id, "STARTED", s(2), started_at=s(2), worker="w1"),
        run(task_id, "RETRY", s(3), exception="RuntimeError('attempt 0 failed')", exception_type="RuntimeError",
            finished_at=s(3)),
        run(task_id, "RECEIVED", s(4), name="sample.flaky", received_at=s(4), retries=1, worker="w1"),
        run(task_id, "STARTED", s(5), started_at=s(5), worker="w1"),
        run(task_id, "SUCCESS", s(6), result="'ok'", runtime=1.0, finished_at=s(6), worker="w1"),
    ]


def fold(rows):
    out = None
    for r in rows:
        out = merge_run(out, r)
    return out


def test_in_order_lifecycle_ends_success_without_retry_exception(engine):
    rows = lifecycle()
    with engine.begin() as conn:
        for r in rows:
            upsert_runs(conn, [r])
        stored = get_run(conn, "t")
    assert stored["state"] == "SUCCESS" and stored["exception"] is None and stored["retries"] == 1
    assert stored["started_at"] == T0 + timedelta(seconds=5)
    assert stored["seen_at"] == T0


def test_any_event_order_and_duplicates_give_the_same_row_in_sql_and_python(engine):
    base = lifecycle()
    rng = random.Random(7)
    orders = [base, list(reversed(base))] + [rng.sample(base, len(base)) for _ in range(10)]
    orders.append(base + base[2:5])  # duplicates
    expected = fold(base)
    with engine.begin() as conn:
        for i, order in enumerate(orders):
            tid = f"t{i}"
            for r in order:
                upsert_runs(conn, [dict(r, task_id=tid)])
            stored = get_run(conn, tid)
            python = fold([dict(r, task_id=tid) for r in order])
            for col in stored:
                if col in ("task_id", "updated_at"):
                    continue
                want = python.get(col, False if col in ("truncated", "redelivered") else 0 if col == "retries" else None)
                assert stored[col] == (pytest.approx(want) if isinstance(want, float) else want), (i, col)
            assert stored["state"] == expected["state"] == "SUCCESS"
            assert stored["result"] == "'ok'" and stored["retries"] == 1


@pytest.mark.parametrize("last", ["SUCCESS", "FAILURE"])
def test_a_retry_reported_after_the_next_attempt_ended_does_not_undo_its_outcome(engine, last):
    # A pool child publishes its retry, then is descheduled before the parent learns of it;
    # another child runs the retry to the end, and only then is task-retried sent.
    s = lambda n: T0 + timedelta(seconds=n)  # noqa: E731
    outcome = {"result": "'ok'"} if last == "SUCCESS" else {"exception": "ValueError('no')", "exception_type": "ValueError"}
    rows = [
        run("late", "PENDING", s(0), name="sample.flaky", args="(1,)", sent_at=s(0), queue="celery"),
        run("late", "STARTED", s(2), started_at=s(2), worker="w1"),
        run("late", "RECEIVED", s(3), name="sample.flaky", received_at=s(3), retries=1, worker="w1"),
        run("late", last, s(4), finished_at=s(4), runtime=0.5, worker="w1", **outcome),
        run("late", "RETRY", s(5), exception="RuntimeError('attempt 0 failed')", exception_type="RuntimeError",
            finished_at=s(5)),
    ]
    rng = random.Random(3)
    with engine.begin() as conn:
        for i, order in enumerate([rows, list(reversed(rows))] + [rng.sample(rows, len(rows)) for _ in range(6)]):
            upsert_runs(conn, [dict(r, task_id=f"late{i}") for r in order])
            stored, python = get_run(conn, f"late{i}"), fold(order)
            assert stored["state"] == python["state"] == last, i
            assert stored["finished_at"] == python["finished_at"] == s(4), i
            assert stored["exception"] == python.get("exception") == outcome.get("exception"), i
            assert stored["result"] == python.get("result") == outcome.get("result"), i


def test_many_rows_in_one_call_merge_like_single_calls(engine):
    rows = lifecycle()
    with engine.begin() as conn:
        upsert_runs(conn, [dict(r, task_id=f"m{i}") for i, r in enumerate(rows)])
        upsert_runs(conn, [dict(r, task_id=f"m{i}") for i, r in enumerate(reversed(rows))])
        stored = [get_run(conn, f"m{i}") for i in range(len(rows))]
    expected = [merge_run(a, b) for a, b in zip(rows, reversed(rows))]
    assert [s["state"] for s in stored] == [e["state"] for e in expected]
    assert [s["result"] for s in stored] == [e.get("result") for e in expected]
    assert [s["exception"] for s in stored] == [e.get("exception") for e in expected]


def test_a_batch_of_many_statements_merges_every_row_like_the_twin(engine):
    # 700 rows: more than one multi-row INSERT on SQLite (256 + 256 + 128 + 32 + 16 + 8 + 4), half
    # of them new and half merging into stored rows, in one call like the writer's batches.
    rng = random.Random(11)
    parts = {}
    for i in range(700):
        order = rng.sample(lifecycle(f"b{i:03}"), 7)
        cut = rng.randint(1, 6)
        parts[f"b{i:03}"] = (fold(order[:cut]), fold(order[cut:]))
    with engine.begin() as conn:
        upsert_runs(conn, [first for key, (first, _) in parts.items() if int(key[1:]) % 2 == 0])
        upsert_runs(conn, [second for _, second in parts.values()])
        stored = {r["task_id"]: r for r in map(dict, conn.execute(select(task_runs)).mappings())}
    assert len(stored) == 700
    for key, (first, second) in parts.items():
        python = merge_run(first, second) if int(key[1:]) % 2 == 0 else merge_run(None, second)
        for col, value in stored[key].items():
            if col == "updated_at":
                continue
            want = python.get(col, False if col in ("truncated", "redelivered") else 0 if col == "retries" else None)
            assert value == (pytest.approx(want) if isinstance(want, float) else want), (key, col)


def test_started_after_succeeded_does_not_flip_state_back(engine):
    with engine.begin() as conn:
        upsert_runs(conn, [run("x", "SUCCESS", T0 + timedelta(seconds=2), result="1")])
        upsert_runs(conn, [run("x", "STARTED", T0 + timedelta(seconds=1), worker="w9", started_at=T0)])
        stored = get_run(conn, "x")
    assert stored["state"] == "SUCCESS" and stored["result"] == "1" and stored["worker"] == "w9"


def test_workers_upsert_keeps_newest_heartbeat(engine):
    hb = lambda n, **kw: {"hostname": "w1", "status": "online", "last_heartbeat": T0 + timedelta(seconds=n),  # noqa: E731
                          "first_seen": T0 + timedelta(seconds=n), "updated_at": T0 + timedelta(seconds=n), **kw}
    with engine.begin() as conn:
        upsert_workers(conn, [hb(5, active=2, processed=10)])
        upsert_workers(conn, [hb(1, active=9, processed=1)])  # late, older heartbeat
        upsert_workers(conn, [hb(9, status="offline", processed=12)])
        row = conn.execute(select(workers)).mappings().one()
    assert row["status"] == "offline" and row["processed"] == 12
    assert row["first_seen"] == T0 + timedelta(seconds=1)
    assert row["last_heartbeat"] == T0 + timedelta(seconds=9)


def test_complete_args_win_over_a_truncated_repr_in_any_order(engine):
    full = "(" + ", ".join(str(i) for i in range(400)) + ")"
    cut = full[:100] + "..."
    a = run("z", "PENDING", T0, args=full, sent_at=T0)
    b = run("z", "RECEIVED", T0 + timedelta(seconds=1), args=cut, received_at=T0 + timedelta(seconds=1))
    with engine.begin() as conn:
        upsert_runs(conn, [b])
        upsert_runs(conn, [a])
        upsert_runs(conn, [dict(a, task_id="y")])
        upsert_runs(conn, [dict(b, task_id="y")])
        assert get_run(conn, "z")["args"] == get_run(conn, "y")["args"] == full
    assert merge_run(b, a)["args"] == merge_run(a, b)["args"] == full


def test_upsert_stores_every_value_exactly_as_a_plain_sqlalchemy_insert(engine):
    from sqlalchemy import text

    from storage.schema import task_runs

    tz = timezone(timedelta(hours=-5))
    times = [T0, T0.replace(microsecond=123456), datetime(2026, 3, 1, 1, 2, 3, 5, tzinfo=tz),
             datetime(999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)]
    rows = [run(f"u{i}", "SUCCESS", at, sent_at=at, started_at=T0, finished_at=at, runtime=1.5, retries=2,
                truncated=True, args="(1,)", name="n") for i, at in enumerate(times)]
    with engine.begin() as conn:
        upsert_runs(conn, rows)
        conn.execute(task_runs.insert(), [dict(r, task_id="plain-" + r["task_id"], queue_wait=None) for r in rows])
        raw = {r[0]: r[1:] for r in conn.execute(text(
            "SELECT task_id, CAST(state_at AS TEXT), CAST(sent_at AS TEXT), CAST(started_at AS TEXT), "
            "CAST(finished_at AS TEXT), CAST(seen_at AS TEXT), runtime, retries, CAST(truncated AS TEXT) "
            "FROM task_runs"))}
    for i in range(len(times)):
        assert raw[f"u{i}"] == raw[f"plain-u{i}"], i


def test_the_schema_head_the_code_expects_is_the_newest_migration():
    from storage.db import migrations_head

    assert head_revision() == migrations_head()
