"""Durable mode: the relay's stream keeps events for a daemon that was killed with -9."""
import threading
import time

import redis
from sqlalchemy import func, select

from monitor.sources.redis_stream import pending_count
from storage.db import make_engine, upgrade
from storage.schema import task_runs
from tests.services import DaemonProcess, wait_until

N_TASKS = 10_000


def count_rows(engine, state=None):
    query = select(func.count()).select_from(task_runs)
    if state:
        query = query.where(task_runs.c.state == state)
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def test_kill_9_mid_run_then_restart_loses_nothing(fresh_redis, sqlite_url, start_worker, tmp_path, celery_client):
    from tasks.relay import install

    app = celery_client(fresh_redis.url)
    install(app)  # the sending side relays its task-sent events too
    engine = make_engine(sqlite_url)
    upgrade(engine)
    daemon = DaemonProcess(fresh_redis.url, sqlite_url, "--source", "stream", logdir=tmp_path)
    daemon.wait_log("taskmon daemon")
    start_worker(fresh_redis.url, app="tests.apps.relayed", pool="threads", concurrency=8)

    ids: list[str] = []

    def send():
        with app.producer_or_acquire() as producer:
            for i in range(N_TASKS):
                ids.append(app.send_task("relayed.add", (i, 1), producer=producer).id)

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 60
    while count_rows(engine) < N_TASKS // 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    daemon.kill()  # mid-run: batches in memory and unacknowledged entries are in flight
    killed_at = count_rows(engine, "SUCCESS")
    sender.join()
    assert killed_at < N_TASKS, "the daemon was killed too late to prove anything"

    restarted = DaemonProcess(fresh_redis.url, sqlite_url, "--source", "stream", logdir=tmp_path)
    try:
        deadline = time.monotonic() + 120
        while count_rows(engine, "SUCCESS") < N_TASKS and time.monotonic() < deadline:
            time.sleep(0.25)
        assert len(set(ids)) == N_TASKS
        with engine.connect() as conn:
            rows = conn.execute(select(task_runs.c.task_id, task_runs.c.state, task_runs.c.result)).all()
        assert len(rows) == N_TASKS  # none twice, none extra
        assert {r.task_id for r in rows} == set(ids)
        assert {r.state for r in rows} == {"SUCCESS"}
        client = redis.Redis(port=fresh_redis.port)
        wait_until(lambda: pending_count(client, "taskmon:events") == 0, "no entry of the stream left unacknowledged",
                   timeout=15)
    finally:
        assert restarted.terminate() == 0
