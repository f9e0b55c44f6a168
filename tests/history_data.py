"""A small known task history for the history/stats/CLI tests, written through storage.runs."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from storage.runs import upsert_runs, upsert_workers


def now_utc() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def run(task_id: str, name: str | None, state: str, seen: datetime, *, wait: float | None = 0.5,
        runtime: float | None = None, **fields) -> dict:
    """A complete row: sent at ``seen``, started ``wait`` s later, finished ``runtime`` s after that."""
    started = seen + timedelta(seconds=wait) if wait is not None else None
    finished = started + timedelta(seconds=runtime) if started is not None and runtime is not None else None
    row = {
        "task_id": task_id, "name": name, "state": state, "state_at": finished or started or seen,
        "seen_at": seen, "sent_at": seen, "received_at": started, "started_at": started,
        "finished_at": finished, "runtime": runtime, "updated_at": finished or started or seen,
    }
    row.update(fields)
    return row


def insert(engine, rows) -> None:
    # One row per call: each is a complete view of its task, and they are few.
    with engine.begin() as conn:
        for row in rows:
            upsert_runs(conn, [row])


def sample_history(now: datetime) -> list[dict]:
    """Eight runs in a workflow and around it, over the last three hours."""
    m = lambda minutes: now - timedelta(minutes=minutes)  # noqa: E731
    return [
        run("r01", "reports.daily", "SUCCESS", m(50), runtime=2.0, worker="celery@a", queue="reports",
            root_id="r01", args="('2026-11-22',)", kwargs="{'force': False}", result="'done'"),
        run("r02", "reports.daily", "FAILURE", m(40), runtime=1.0, worker="celery@b", queue="reports",
            exception="ValueError('bad day')", exception_type="ValueError",
            traceback="Traceback (most recent call last):\n  File \"reports.py\", line 3\nValueError: bad day"),
        run("r03", "billing.charge", "SUCCESS", m(30), runtime=4.0, worker="celery@a", queue="celery"),
        run("r04", "billing.charge", "RETRY", m(20), runtime=0.5, worker="celery@b", queue="celery", retries=2,
            exception="TimeoutError('gateway')", exception_type="TimeoutError"),
        run("r05", "mail.send", "STARTED", m(180), worker="celery@b", queue="mail"),
        run("r06", "mail.send", "PENDING", m(1), wait=None, queue="mail"),
        run("r07", "mail.send", "SUCCESS", m(49), runtime=0.25, worker="celery@a", queue="mail",
            parent_id="r01", root_id="r01"),
        run("r08", "mail.send", "FAILURE", m(48), runtime=0.75, worker="celery@a", queue="mail",
            parent_id="r07", root_id="r01", exception="SMTPError('down')", exception_type="SMTPError"),
    ]


def sample_workers(now: datetime) -> list[dict]:
    return [
        {"hostname": "celery@a", "status": "online", "last_heartbeat": now - timedelta(seconds=1), "active": 1,
         "processed": 120, "loadavg": "0.5,0.4,0.3", "freq": 2.0, "software": "py-celery 5.7.0 Linux",
         "first_seen": now - timedelta(hours=5), "updated_at": now},
        {"hostname": "celery@b", "status": "online", "last_heartbeat": now - timedelta(minutes=10), "active": 0,
         "processed": 30, "loadavg": "0.1,0.1,0.1", "freq": 2.0, "software": "py-celery 5.7.0 Linux",
         "first_seen": now - timedelta(hours=5), "updated_at": now - timedelta(minutes=10)},
        {"hostname": "celery@c", "status": "offline", "last_heartbeat": now - timedelta(hours=1), "active": 0,
         "processed": 7, "loadavg": None, "freq": 5.0, "software": None,
         "first_seen": now - timedelta(hours=2), "updated_at": now - timedelta(hours=1)},
    ]


def load_sample(engine, now: datetime) -> None:
    insert(engine, sample_history(now))
    with engine.begin() as conn:
        upsert_workers(conn, sample_workers(now))


def reporting_history(today: datetime):
    """For the SQL recipes and views: two full UTC days before today, a run from five minutes ago, and one from 40 days ago."""
    d1, d2 = today - timedelta(days=2), today - timedelta(days=1)
    at = lambda day, h, m=0: day + timedelta(hours=h, minutes=m)  # noqa: E731
    a, b, c = "reports.daily", "billing.charge", "mail.send"
    w1, w2 = "celery@w1", "celery@w2"
    return [
        run("a1", a, "SUCCESS", at(d1, 1), wait=1.0, runtime=10.0, worker=w1, queue="reports"),
        run("a2", a, "FAILURE", at(d1, 2), wait=3.0, runtime=20.0, worker=w1, queue="reports",
            exception="ValueError('x')", exception_type="ValueError"),
        run("b1", b, "SUCCESS", at(d1, 1, 30), wait=0.5, runtime=1.0, worker=w2, queue="celery", retries=2),
        run("b2", b, "SUCCESS", at(d1, 1, 45), wait=1.5, runtime=3.0, worker=w2, queue="celery"),
        run("c1", c, "FAILURE", at(d1, 1, 15), wait=2.0, runtime=0.5, worker=w1, queue="mail", retries=3,
            exception="SMTPError('down')", exception_type="SMTPError"),
        run("a3", a, "SUCCESS", at(d2, 1), wait=2.0, runtime=30.0, worker=w2, queue="reports"),
        run("b3", b, "FAILURE", at(d2, 1, 10), wait=1.5, runtime=2.0, worker=w1, queue="celery", retries=1,
            exception="TimeoutError('gw')", exception_type="TimeoutError"),
        run("b4", b, "FAILURE", at(d2, 3, 20), wait=0.5, runtime=4.0, worker=w2, queue="celery",
            exception="TimeoutError('gw')", exception_type="TimeoutError"),
        run("c2", c, "SUCCESS", at(d2, 1, 40), wait=0.5, runtime=0.25, worker=w1, queue="mail"),
        run("c3", c, "STARTED", at(d2, 10), wait=1.0, worker=w2, queue="mail"),
        run("c4", c, "REVOKED", at(d2, 11), wait=None, queue="mail"),
        run("n1", c, "PENDING", datetime.now(timezone.utc) - timedelta(minutes=5), wait=None, queue="mail"),
        run("o1", a, "FAILURE", today - timedelta(days=40, hours=-5), wait=1.0, runtime=99.0, worker=w1,
            queue="reports", exception="ValueError('old')", exception_type="ValueError"),
    ]
