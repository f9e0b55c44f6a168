"""A sweep over stored rows (scripted events, ``now`` passed in) on SQLite and PostgreSQL."""
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from monitor.detectors.sweep import Sweeper
from monitor.ingest.events import to_update
from tasks.settings import Settings
from monitor.ingest.state import Pending
from storage.deadletters import get_dead_letter, list_dead_letters, resolve
from storage.health import record_gap
from storage.runs import get_run, upsert_runs, upsert_workers
from storage.schema import workers

T0 = 1_795_000_000.0
NOW0 = datetime.fromtimestamp(T0, timezone.utc)
at = lambda n: NOW0 + timedelta(seconds=n)  # noqa: E731
SETTINGS = Settings(task_time_limit=600, timeouts=(("sample.sleep", 30),), lost_after_heartbeats=2, stuck_after=60)


def ev(kind, t, task_id=None, **fields):
    event = {"type": kind, "timestamp": T0 + t, "hostname": fields.pop("hostname", "w1@host"), **fields}
    if task_id:
        event["uuid"] = task_id
    return event


def sent(task_id, t, name="sample.add", queue="celery", **kw):
    return ev("task-sent", t, task_id, name=name, args="(1, 2)", kwargs="{}", queue=queue, retries=0,
              hostname="client@host", **kw)


def received(task_id, t, name="sample.add", **kw):
    return ev("task-received", t, task_id, name=name, args="(1, 2)", kwargs="{}", retries=0, **kw)


def heartbeat(t, host="w1@host", kind="worker-heartbeat"):
    return ev(kind, t, hostname=host, freq=2.0, active=1, processed=1)


def ingest(engine, events, now_s):
    """Write events the way the daemon's writer does."""
    pending = Pending()
    for event in events:
        pending.add(to_update(event, 16384))
    with engine.begin() as conn:
        upsert_runs(conn, [dict(r, updated_at=at(now_s)) for r in pending.tasks.values()])
        upsert_workers(conn, [dict(w, updated_at=at(now_s)) for w in pending.workers.values()])


def sweeper(engine):
    return Sweeper(engine, SETTINGS, clock=lambda: at(0))


def test_a_task_on_a_silent_worker_is_lost_once_and_recovers_when_redelivered(engine):
    ingest(engine, [heartbeat(0), sent("t1", 0), received("t1", 0.5), ev("task-started", 1, "t1"),
                    sent("ok", 0), received("ok", 0.5), ev("task-succeeded", 1, "ok", result="3", runtime=0.1)], 1)
    sw = sweeper(engine)
    assert sw.sweep(at(3.9), feed_since=at(-60)).counts() == {}
    # the worker is gone 2 x 2 s after its last heartbeat; the task 2 x 2 s after its own last event
    assert sw.sweep(at(4.9), feed_since=at(-60)).counts() == {"workers_lost": 1}
    assert sw.sweep(at(5), feed_since=at(-60)).counts() == {"lost": 1, "dead_letters": 1}
    with engine.connect() as conn:
        row, letter = get_run(conn, "t1"), get_dead_letter(conn, "t1")
        status = conn.execute(select(workers.c.status)).scalar()
    assert row["state"] == "LOST" and row["state_at"] == at(5) and row["exception_type"] == "WorkerLostError"
    assert status == "lost"
    assert letter["reason"] == "lost" and letter["state"] == "open" and letter["worker"] == "w1@host"
    assert letter["first_seen"] == at(0) and letter["last_seen"] == at(1) and letter["dead_at"] == at(5)
    assert sw.sweep(at(9), feed_since=at(-60)).counts() == {}  # nothing twice

    # acks_late: the broker delivers it again to another worker; the real events override LOST
    ingest(engine, [heartbeat(60, "w2@host"), received("t1", 61, hostname="w2@host"),
                    ev("task-started", 61.5, "t1", hostname="w2@host")], 62)
    assert sw.sweep(at(62), feed_since=at(-60)).counts() == {"resolved": 1}
    with engine.connect() as conn:
        row, letter = get_run(conn, "t1"), get_dead_letter(conn, "t1")
    assert row["state"] == "STARTED" and row["worker"] == "w2@host" and row["redelivered"] is True
    assert letter["state"] == "resolved" and letter["resolution"].startswith("recovered")


def test_no_lost_verdicts_while_the_feed_is_down_or_just_after_a_gap(engine):
    ingest(engine, [heartbeat(0), received("t1", 0.5), ev("task-started", 1, "t1")], 1)
    sw = sweeper(engine)
    assert sw.sweep(at(100), feed_since=None).counts() == {}
    with engine.begin() as conn:
        record_gap(conn, source="pubsub", reason="redis_disconnect", started_at=at(10), ended_at=at(90), now=at(90))
    assert sw.sweep(at(93), feed_since=at(-60)).counts() == {}  # heartbeats may have been lost until 90
    assert sw.sweep(at(94), feed_since=at(-60)).counts()["lost"] == 1


def test_a_worker_found_lost_keeps_its_later_tasks_while_the_feed_is_down(engine):
    ingest(engine, [heartbeat(0)], 1)
    sw = sweeper(engine)
    assert sw.sweep(at(5), feed_since=at(-60)).counts() == {"workers_lost": 1}
    # It is back, but its heartbeat has not been stored when the feed drops: only a task event was.
    ingest(engine, [received("t1", 6), ev("task-started", 6.5, "t1")], 7)
    assert sw.sweep(at(30), feed_since=None).counts() == {}
    with engine.connect() as conn:
        assert get_run(conn, "t1")["state"] == "STARTED"
    # Listening again: it gets its grace from then, and is lost only if it stays silent.
    assert sw.sweep(at(33), feed_since=at(30)).counts() == {}
    assert sw.sweep(at(34), feed_since=at(30)).counts() == {"lost": 1, "dead_letters": 1}


def test_timeouts_stuck_tasks_failures_and_rejections(engine):
    ingest(engine, [
        heartbeat(0), heartbeat(98),
        sent("slow", 0, name="sample.sleep"), received("slow", 0, name="sample.sleep"), ev("task-started", 1, "slow"),
        sent("quick", 0), received("quick", 0), ev("task-started", 80, "quick"),
        sent("queued", 0, queue="nowhere"),
        sent("bad", 0), received("bad", 0), ev("task-failed", 2, "bad", exception="ValueError('boom')"),
        sent("limit", 0), received("limit", 0), ev("task-failed", 3, "limit", exception="TimeLimitExceeded(2,)"),
        sent("retrying", 0), received("retrying", 0), ev("task-retried", 2, "retrying", exception="IOError()"),
        sent("requeued", 0), received("requeued", 0), ev("task-rejected", 2, "requeued", requeue=True),
        sent("dropped", 0), received("dropped", 0), ev("task-rejected", 2, "dropped"),
    ], 98)
    result = sweeper(engine).sweep(at(99), feed_since=at(-60))
    assert {v.task_id: v.state for v in result.verdicts} == {"slow": "TIMEOUT"}  # 30 s limit for sample.sleep
    assert [s.task_id for s in result.stuck] == ["queued"]
    assert {d["task_id"]: d["reason"] for d in result.dead_letters} == {
        "slow": "timeout", "bad": "failure", "limit": "timeout", "dropped": "rejected"}
    with engine.connect() as conn:
        queued, slow = get_run(conn, "queued"), get_run(conn, "slow")
        letters = {d["task_id"]: d for d in list_dead_letters(conn)}
    assert queued["state"] == "PENDING" and queued["stuck_at"] == at(60)
    assert slow["state"] == "TIMEOUT" and slow["state_at"] == at(31) and "30s" in slow["exception"]
    assert letters["bad"]["exception"] == "ValueError('boom')" and letters["bad"]["exception_type"] == "ValueError"


def test_a_later_death_reopens_a_resolved_letter_and_a_revoke_keeps_it_open(engine):
    ingest(engine, [heartbeat(0), received("slow", 0, name="sample.sleep"), ev("task-started", 1, "slow"),
                    heartbeat(40)], 40)
    sw = sweeper(engine)
    sw.sweep(at(40), feed_since=at(-60))
    with engine.begin() as conn:
        assert resolve(conn, "slow", "looked at it", at(41))
    # the worker's hard limit kills it: a real task-failed with TimeLimitExceeded, a later death
    ingest(engine, [ev("task-failed", 42, "slow", exception="TimeLimitExceeded(60,)")], 42)
    assert sw.sweep(at(43), feed_since=at(-60)).counts() == {"dead_letters": 1}
    with engine.connect() as conn:
        letter = get_dead_letter(conn, "slow")
    assert letter["state"] == "open" and letter["dead_at"] == at(42) and letter["resolution"] is None
    ingest(engine, [heartbeat(44), ev("task-revoked", 44, "slow", terminated=True, signum=15)], 44)
    assert sw.sweep(at(45), feed_since=at(-60)).counts() == {}
    with engine.connect() as conn:
        assert get_dead_letter(conn, "slow")["state"] == "open"


def test_a_healthy_worker_with_retries_and_long_tasks_gives_no_findings(engine):
    events = [heartbeat(t) for t in range(0, 60, 2)]
    events += [sent("long", 0, name="reports.daily"), received("long", 0, name="reports.daily"),
               ev("task-started", 0.1, "long")]  # 59 s of its 600
    events += [sent("flaky", 0), received("flaky", 0), ev("task-started", 0.1, "flaky"),
               ev("task-retried", 0.2, "flaky", exception="RuntimeError()"),
               dict(sent("flaky", 0.4), retries=1), dict(received("flaky", 0.5), retries=1),
               ev("task-started", 0.6, "flaky"), ev("task-succeeded", 0.7, "flaky", result="'ok'")]
    ingest(engine, events, 59)
    sw = sweeper(engine)
    for now in (10, 29, 59):
        assert sw.sweep(at(now), feed_since=at(-60)).counts() == {}, now
    with engine.connect() as conn:
        assert list_dead_letters(conn, states=("open", "replayed", "resolved")) == []
        assert get_run(conn, "flaky")["redelivered"] is False
