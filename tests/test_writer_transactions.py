"""The writer commits a batch in bounded transactions, so a verdict on one of its rows never waits for the whole batch."""
from sqlalchemy import event, select, text

from monitor.ingest.writer import Prepared, TransactionSize, Writer
from storage.db import make_engine, upgrade
from storage.params import CHUNK_ROWS
from storage.runs import prepare_runs
from storage.schema import task_runs
from tests.test_storage_contract import lifecycle


def stored_states(engine) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(select(task_runs.c.task_id, task_runs.c.state)).all())


def test_a_batch_is_committed_in_transactions_of_the_sized_rows_and_acked_after_the_last(engine):
    done = lifecycle()[-1]
    rows = [dict(done, task_id=f"t{i:05}") for i in range(2000)]
    commits, acked = [], []
    # Each commit sees how many of the batch's runs are stored so far (on another connection:
    # what a verdict or the API would see), and whether the batch was acked yet.
    watcher = make_engine(engine.url.render_as_string(hide_password=False))

    def on_commit(conn):
        with watcher.connect() as other:
            commits.append((other.execute(text("SELECT count(*) FROM task_runs")).scalar(), len(acked)))

    event.listen(engine, "commit", on_commit)  # fires as each transaction begins to commit
    writer = Writer(engine, None, field_max_bytes=16384, transaction=TransactionSize(1e9, 512, start=512))
    prepared = Prepared(prepare_runs(engine.dialect, rows, packed=True), [], [], [lambda: acked.append(1)], 2000)

    assert writer.commit(prepared)

    assert len(stored_states(engine)) == 2000 and acked == [1]
    # 512, 512, 512, 464 runs: each transaction's predecessors were visible before it committed.
    assert commits == [(0, 0), (512, 0), (1024, 0), (1536, 0)]
    watcher.dispose()


REFUSE_AND_CANCEL = """
CREATE TABLE row_writes (task_id text);
CREATE SEQUENCE cancel_once;
CREATE FUNCTION refuse_some() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.task_id = 't01200' THEN
        RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.task_id = 't00700' AND nextval('cancel_once') = 1 THEN
        RAISE EXCEPTION 'cancelled by the test' USING ERRCODE = 'query_canceled';
    END IF;
    INSERT INTO row_writes VALUES (NEW.task_id);
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_some BEFORE INSERT ON task_runs FOR EACH ROW EXECUTE FUNCTION refuse_some();
"""


def test_a_retry_or_the_row_by_row_fallback_goes_on_after_the_transactions_already_committed(pg_url):
    engine = make_engine(pg_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(REFUSE_AND_CANCEL)
    done = lifecycle()[-1]
    rows = [dict(done, task_id=f"t{i:05}") for i in range(2000)]
    acked = []
    writer = Writer(engine, None, field_max_bytes=16384, transaction=TransactionSize(1e9, 512, start=512))
    prepared = Prepared(prepare_runs(engine.dialect, rows, packed=True), [], [], [lambda: acked.append(1)], 2000)

    assert writer.commit(prepared)

    stored = stored_states(engine)
    assert sorted(stored) == [r["task_id"] for r in rows if r["task_id"] != "t01200"]
    with engine.connect() as conn:
        writes = dict(conn.execute(text("SELECT task_id, count(*) FROM row_writes GROUP BY task_id")).all())
    # The first 512 runs were committed before the cancel and never written again; the cancelled
    # transaction was retried once; the refused one's rows went on one by one.
    assert all(writes[f"t{i:05}"] == 1 for i in range(2000) if i != 1200)
    assert writer.counters.get("malformed.db_rejected") == 1 and writer.counters.get("db_errors") == 1
    assert acked == [1]
    engine.dispose()


def test_the_transaction_size_follows_the_time_the_last_one_took_within_its_bounds():
    size = TransactionSize(seconds=0.1, most=8192, start=2048)
    size.took(2048, 0.4)  # four times too long: a quarter
    assert size.rows == 512
    size.took(512, 1.0)  # never less than a chunk of prepared rows
    assert size.rows == CHUNK_ROWS
    size.took(CHUNK_ROWS, 0.001)  # a fast one: at most twice as many next time
    assert size.rows == 2 * CHUNK_ROWS
    for _ in range(10):
        size.took(size.rows, 0.001)
    assert size.rows == 8192
    size.took(10, 5.0)  # a batch's last few runs say little about the rate
    assert size.rows == 8192
