"""The writer's row-by-row fallback: a batch the database refuses as a whole is written row by row."""
from datetime import datetime, timedelta, timezone

from sqlalchemy import select, text

from monitor.ingest.buffer import Batch, Gap, Taken
from monitor.ingest.writer import Writer
from storage.db import make_engine, upgrade
from storage.schema import receiver_gaps, task_runs
from tests.eventgen import T0

# PostgreSQL refuses one row for good (a check violation: the batch goes row by row), and the
# first attempt at another is cancelled (an OperationalError: the database is in trouble, retry
# the batch). The sequence is outside transactions, so the cancel happens exactly once.
REFUSING_TRIGGER = """
CREATE SEQUENCE cancel_once;
CREATE FUNCTION refuse_some() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.task_id = 'a-refused' THEN
        RAISE EXCEPTION 'refused by the test' USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.task_id = 'b-cancelled-once' AND nextval('cancel_once') = 1 THEN
        RAISE EXCEPTION 'cancelled by the test' USING ERRCODE = 'query_canceled';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_some BEFORE INSERT ON task_runs FOR EACH ROW EXECUTE FUNCTION refuse_some();
"""


def sent(uuid: str) -> dict:
    return {"type": "task-sent", "uuid": uuid, "timestamp": T0, "name": "sample.add"}


def test_a_gap_is_recorded_once_and_reconciled_once_when_the_row_by_row_fallback_is_retried(pg_url):
    engine = make_engine(pg_url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(REFUSING_TRIGGER)
    reconciled = []
    writer = Writer(engine, None, field_max_bytes=16384, on_gap=lambda gap_id, gap: reconciled.append((gap_id, gap)))
    started = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    gap = Gap("pubsub", "redis_disconnect", started, started + timedelta(seconds=30))
    taken = Taken([Batch("pubsub", [sent("a-refused"), sent("b-cancelled-once"), sent("c-fine")])], [gap])

    assert writer.write(taken)

    with engine.connect() as conn:
        gap_ids = conn.execute(select(receiver_gaps.c.id)).scalars().all()
        stored = conn.execute(select(task_runs.c.task_id).order_by(task_runs.c.task_id)).scalars().all()
        assert conn.execute(text("SELECT last_value FROM cancel_once")).scalar() == 2  # it was retried
    assert len(gap_ids) == 1
    assert reconciled == [(gap_ids[0], gap)]
    assert stored == ["b-cancelled-once", "c-fine"]
    assert writer.counters.get("malformed.db_rejected") == 1
    assert writer.counters.get("gaps") == 1
    engine.dispose()
