"""LOST, TIMEOUT and the redelivery flag merge the same way in Python and SQL, in any event order."""
import random
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import update

from monitor.ingest.events import to_update
from storage.runs import get_run, merge_run, upsert_runs
from storage.schema import task_runs

T0 = datetime(2026, 11, 23, 6, 0, 0, tzinfo=timezone.utc)
s = lambda n: T0 + timedelta(seconds=n)  # noqa: E731


def run(task_id, state, at, **fields):
    return {"task_id": task_id, "state": state, "state_at": at, "seen_at": at, "updated_at": at, **fields}


def received(task_id, at, retries=0, worker="w1"):
    return run(task_id, "RECEIVED", at, args="(3,)", received_at=at, retries=retries,
               worker=worker, received_attempt=retries, received_first_at=at, redelivered=False)


def fold(rows):
    out = None
    for r in rows:
        out = merge_run(out, r)
    return out


def assert_sql_equals_python(engine, rows, orders=5, seed=5):
    """Upsert ``rows`` in several orders (plus duplicates); every stored row equals the Python fold."""
    rng = random.Random(seed)
    variants = [rows, list(reversed(rows))] + [rng.sample(rows, len(rows)) for _ in range(orders)]
    variants.append(rows + rows[1:3])
    stored_rows = []
    with engine.begin() as conn:
        for i, order in enumerate(variants):
            tid = f"{rows[0]['task_id']}-{i}"
            for r in order:
                upsert_runs(conn, [dict(r, task_id=tid)])
            stored = get_run(conn, tid)
            python = fold([dict(r, task_id=tid) for r in order])
            for col in stored:
                if col in ("task_id", "updated_at"):
                    continue
                want = python.get(col, False if col in ("truncated", "redelivered") else 0 if col == "retries" else None)
                assert stored[col] == (pytest.approx(want) if isinstance(want, float) else want), (i, col)
            stored_rows.append(stored)
    first = {k: v for k, v in stored_rows[0].items() if k not in ("task_id", "updated_at")}
    for other in stored_rows[1:]:
        assert {k: v for k, v in other.items() if k not in ("task_id", "updated_at")} == first
    return stored_rows[0]


def test_a_second_receipt_of_the_same_attempt_is_a_redelivery_in_any_order(engine):
    rows = [
        run("rd", "PENDING", s(0), name="sample.sleep", args="(3,)", sent_at=s(0), queue="celery"),
        received("rd", s(1), worker="w1"),
        run("rd", "STARTED", s(2), started_at=s(2), worker="w1"),
        received("rd", s(60), worker="w2"),  # acks_late: w1 died, the broker delivered it again
        run("rd", "STARTED", s(61), started_at=s(61), worker="w2"),
        run("rd", "SUCCESS", s(64), result="3", runtime=3.0, finished_at=s(64), worker="w2"),
    ]
    stored = assert_sql_equals_python(engine, rows)
    assert stored["redelivered"] is True and stored["received_first_at"] == s(1)
    assert stored["received_at"] == s(60) and stored["worker"] == "w2" and stored["state"] == "SUCCESS"


def test_retries_and_duplicate_events_are_not_redeliveries(engine):
    rows = [
        run("rt", "PENDING", s(0), name="sample.flaky", args="(3,)", sent_at=s(0), queue="celery", retries=0),
        received("rt", s(1)),
        run("rt", "STARTED", s(2), started_at=s(2)),
        run("rt", "RETRY", s(3), exception="RuntimeError('x')", exception_type="RuntimeError", finished_at=s(3)),
        run("rt", "PENDING", s(3.1), sent_at=s(3.1), retries=1),
        received("rt", s(4), retries=1),
        run("rt", "STARTED", s(5), started_at=s(5)),
        run("rt", "SUCCESS", s(6), result="'ok'", finished_at=s(6)),
    ]
    stored = assert_sql_equals_python(engine, rows + [received("rt", s(1)), received("rt", s(4), retries=1)])
    assert stored["redelivered"] is False and stored["retries"] == 1
    assert stored["received_attempt"] == 1 and stored["received_first_at"] == s(4)


def set_state(conn, task_id, state, at, **fields):
    conn.execute(update(task_runs).where(task_runs.c.task_id == task_id).values(state=state, state_at=at, **fields))


def test_lost_gives_way_to_any_later_event_but_not_to_a_stale_task_sent(engine):
    lost = dict(exception="worker w1 stopped sending heartbeats", exception_type="WorkerLostError")
    with engine.begin() as conn:
        for tid in ("l1", "l2", "l3"):
            upsert_runs(conn, [received(tid, s(1))])
            set_state(conn, tid, "LOST", s(10), **lost)
        upsert_runs(conn, [received("l1", s(60), worker="w2")])
        upsert_runs(conn, [run("l2", "SUCCESS", s(5), result="3", finished_at=s(5))])
        upsert_runs(conn, [run("l3", "PENDING", s(0), sent_at=s(0), queue="celery")])
        l1, l2, l3 = (get_run(conn, t) for t in ("l1", "l2", "l3"))
    assert l1["state"] == "RECEIVED" and l1["worker"] == "w2" and l1["redelivered"] is True
    assert l2["state"] == "SUCCESS" and l2["exception"] is None and l2["result"] == "3"
    assert l3["state"] == "LOST" and l3["exception_type"] == "WorkerLostError" and l3["queue"] == "celery"
    lost_row = run("x", "LOST", s(10), **lost)
    assert merge_run(lost_row, received("x", s(60)))["state"] == "RECEIVED"
    assert merge_run(lost_row, run("x", "PENDING", s(0)))["state"] == "LOST"


def test_timeout_survives_a_duplicate_start_and_yields_to_the_real_outcome(engine):
    verdict = dict(exception="running for 700s, over its 600s limit", exception_type="TimeLimitExceeded")
    with engine.begin() as conn:
        for tid in ("t1", "t2", "t3"):
            upsert_runs(conn, [run(tid, "STARTED", s(0), started_at=s(0), worker="w1", name="sample.sleep")])
            set_state(conn, tid, "TIMEOUT", s(600), **verdict)
        upsert_runs(conn, [run("t1", "STARTED", s(0), started_at=s(0), worker="w1")])
        upsert_runs(conn, [run("t2", "SUCCESS", s(700), result="1", finished_at=s(700), runtime=700.0)])
        upsert_runs(conn, [run("t3", "REVOKED", s(650), exception="revoked (terminated, signal 15)",
                               exception_type="Revoked", finished_at=s(650))])
        t1, t2, t3 = (get_run(conn, t) for t in ("t1", "t2", "t3"))
    assert t1["state"] == "TIMEOUT" and t1["exception"] == verdict["exception"]
    assert t2["state"] == "SUCCESS" and t2["exception"] is None and t2["runtime"] == 700.0
    assert t3["state"] == "REVOKED" and t3["exception_type"] == "Revoked"


def event(kind, **fields):
    return {"type": kind, "uuid": "e1", "hostname": "w1@host", "timestamp": 1_795_000_000.0, **fields}


def test_time_limit_failures_are_timeouts_and_other_failures_are_not():
    hard = to_update(event("task-failed", exception="TimeLimitExceeded(2,)"), 16384).row
    soft = to_update(event("task-failed", exception="SoftTimeLimitExceeded()"), 16384).row
    plain = to_update(event("task-failed", exception="ValueError('x')"), 16384).row
    retried = to_update(event("task-retried", exception="SoftTimeLimitExceeded()"), 16384).row
    assert (hard["state"], soft["state"], plain["state"], retried["state"]) == ("TIMEOUT", "TIMEOUT", "FAILURE", "RETRY")


def test_receipts_and_rejections_are_recorded_from_events():
    row = to_update(event("task-received", name="a", retries=2), 16384).row
    assert row["received_attempt"] == 2 and row["received_first_at"] == row["received_at"]
    requeued = to_update(event("task-rejected", requeue=True), 16384).row
    dropped = to_update(event("task-rejected"), 16384).row
    assert requeued["exception"] == "Reject(requeue=True)" and dropped["exception"] == "Reject(requeue=False)"


def test_rejected_is_ordered_by_time_so_it_shows_and_a_requeued_task_moves_on(engine):
    rejected = [
        run("rj", "PENDING", s(0), name="sample.add", args="(3,)", sent_at=s(0), queue="celery"),
        received("rj", s(1)),
        run("rj", "REJECTED", s(2), exception="Reject(requeue=False)", exception_type="Reject", finished_at=s(2)),
    ]
    stored = assert_sql_equals_python(engine, rejected)
    assert stored["state"] == "REJECTED" and stored["exception"] == "Reject(requeue=False)"
    requeued = [
        dict(rejected[0], task_id="rq"), received("rq", s(1)),
        run("rq", "REJECTED", s(2), exception="Reject(requeue=True)", exception_type="Reject", finished_at=s(2)),
        received("rq", s(3), worker="w2"),
        run("rq", "STARTED", s(4), started_at=s(4), worker="w2"),
    ]
    stored = assert_sql_equals_python(engine, requeued)
    assert stored["state"] == "STARTED" and stored["worker"] == "w2" and stored["redelivered"] is True
