"""PostgreSQL's bulk path (COPY into staging + one merging INSERT ... SELECT) stores what the upsert stored."""
import random
import threading

from sqlalchemy import select, text

from monitor.ingest.writer import Prepared, Writer
from storage.db import make_engine, upgrade
from storage.merge import merge_run
from storage.pg_bulk import STAGE_ROWS
from storage.runs import get_run, prepare_runs, upsert_runs
from storage.schema import task_runs
from tests.test_storage_contract import fold, lifecycle


def stored_runs(engine) -> dict:
    with engine.connect() as conn:
        return {r["task_id"]: dict(r) for r in conn.execute(select(task_runs)).mappings()}


def assert_like_the_twin(stored: dict, python: dict, where) -> None:
    for col, value in stored.items():
        if col == "updated_at":
            continue
        want = python.get(col, False if col in ("truncated", "redelivered") else 0 if col == "retries" else None)
        assert value == want, (where, col)


def test_a_task_twice_in_one_call_merges_as_in_two_calls(engine):
    rows = lifecycle("twice")
    rng = random.Random(5)
    order = rng.sample(rows, len(rows))
    with engine.begin() as conn:
        # Other tasks around it, so the call is a bulk one on PostgreSQL.
        upsert_runs(conn, [dict(r, task_id=f"o{i}") for i, r in enumerate(rows)] + order)
        stored = get_run(conn, "twice")
    assert_like_the_twin(stored, fold(order), "twice")


def test_a_batch_larger_than_one_staging_step_is_stored_whole_and_merged(engine):
    n = STAGE_ROWS + 300
    rows = lifecycle()
    first = [dict(rows[i % 3], task_id=f"k{i:05}") for i in range(n)]
    second = [dict(rows[6 - i % 3], task_id=f"k{i:05}") for i in range(n)]
    with engine.begin() as conn:
        upsert_runs(conn, first)
        upsert_runs(conn, second)
    stored = stored_runs(engine)
    assert len(stored) == n
    for i in (0, 1, 2, STAGE_ROWS - 1, STAGE_ROWS, n - 1):
        key = f"k{i:05}"
        assert_like_the_twin(stored[key], merge_run(first[i], second[i]), key)


COUNTING_TRIGGER = """
CREATE TABLE row_writes (op text, task_id text);
CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO row_writes VALUES (TG_OP, NEW.task_id);
    RETURN NEW;
END $$;
CREATE TRIGGER count_write AFTER INSERT OR UPDATE ON task_runs FOR EACH ROW EXECUTE FUNCTION count_write();
"""


def test_row_triggers_on_task_runs_fire_for_every_row_of_a_bulk_write(pg_url):
    engine = make_engine(pg_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(COUNTING_TRIGGER)
    rows = lifecycle()
    with engine.begin() as conn:
        upsert_runs(conn, [dict(rows[0], task_id=f"t{i}") for i in range(50)])
    with engine.begin() as conn:
        upsert_runs(conn, [dict(rows[-1], task_id=f"t{i}") for i in range(0, 50, 2)] + [dict(rows[0], task_id="new")])
    with engine.connect() as conn:
        writes = conn.execute(text("SELECT op, count(*) FROM row_writes GROUP BY op")).all()
    assert dict(writes) == {"INSERT": 51, "UPDATE": 25}
    engine.dispose()


def test_a_value_over_a_column_limit_is_refused_alone_and_counted_the_rest_of_the_batch_stored(pg_url):
    # task_runs.name is VARCHAR(255) on PostgreSQL. The event decoder cuts names to fit, so the
    # rows are handed to the writer ready-made, as a batch prepared elsewhere would be: the bulk
    # statement is refused as a whole, and the writer goes on row by row.
    engine = make_engine(pg_url)
    upgrade(engine)
    writer = Writer(engine, None, field_max_bytes=16384)
    done = lifecycle()[-1]
    rows = [dict(done, task_id=f"fine-{i:02}", name="sample.add") for i in range(40)]
    rows.insert(17, dict(done, task_id="too-long", name="sample." + "x" * 300))
    acked = []
    prepared = Prepared(prepare_runs(engine.dialect, rows, packed=True), [], [], [lambda: acked.append(1)], 41)

    assert writer.commit(prepared)

    stored = stored_runs(engine)
    assert sorted(stored) == [f"fine-{i:02}" for i in range(40)]
    assert all(row["state"] == "SUCCESS" and row["result"] == "'ok'" for row in stored.values())
    assert writer.counters.get("malformed.db_rejected") == 1
    assert writer.counters.get("events_written") == 41 and acked == [1]

    # The refused transaction took the connection's staging table with it: the next batch makes another.
    again = [dict(done, task_id=f"next-{i:02}", name="sample.add") for i in range(5)]
    assert writer.commit(Prepared(prepare_runs(engine.dialect, again), [], [], [], 5))
    assert len(stored_runs(engine)) == 45 and writer.counters.get("malformed.db_rejected") == 1
    engine.dispose()


def test_concurrent_bulk_writers_on_the_same_tasks_neither_deadlock_nor_lose_a_merge(pg_url):
    # Two daemons on one database: each writes its own view of the same tasks, in batches,
    # at the same time; every stored row is the twin's merge of both views.
    engines = [make_engine(pg_url) for _ in range(2)]
    upgrade(engines[0])
    rows = lifecycle()
    keys = [f"c{i:04}" for i in range(3000)]
    rng = random.Random(13)
    views = {}
    for k in keys:  # between them the whole lifecycle, some of it twice: any order merges to one row
        order = rng.sample(rows, len(rows))
        views[k] = (order[:4] + order[:1], order[4:] + order[5:7])
    errors = []

    def write(engine, side: int) -> None:
        try:
            for start in range(0, len(keys), 500):
                batch = keys[start:start + 500]
                for step in range(5):
                    with engine.begin() as conn:
                        upsert_runs(conn, [dict(views[k][side][step], task_id=k) for k in batch])
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(engines[i], i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stored = stored_runs(engines[0])
    whole = fold(rows)
    for k in keys:
        assert_like_the_twin(dict(stored[k], task_id="t"), whole, k)
    for engine in engines:
        engine.dispose()


def test_the_staging_table_is_private_to_each_connection_and_emptied_after_each_write(pg_url):
    engine = make_engine(pg_url)
    upgrade(engine)
    rows = lifecycle()
    with engine.begin() as conn:
        upsert_runs(conn, [dict(rows[0], task_id=f"p{i}") for i in range(10)])
        assert conn.exec_driver_sql("SELECT count(*) FROM pg_temp.taskmon_runs_staging").scalar() == 0
    with engine.connect() as conn:
        schemas = conn.exec_driver_sql(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = 'taskmon_runs_staging'").scalars().all()
    assert schemas and all(s.startswith("pg_temp") for s in schemas)
    engine.dispose()
