"""Supervised ingestion, with the tests' own Redis: a source thread that dies is restarted, one that
keeps dying stops the daemon with exit 1, `taskmon check` fails while a source is down and passes
again once it is back, and no task is marked LOST while taskmon is not listening."""
import json
import threading
import time

import redis
from click.testing import CliRunner
from sqlalchemy import select

from cli import cli
from monitor.daemon import Daemon
from monitor.supervisor import RESTART_LIMIT
from storage.db import make_engine, upgrade
from storage.health import latest_status, list_gaps
from storage.schema import dead_letters, task_runs, workers
from tasks.settings import Settings
from tests.daemon_helpers import running_daemon, wait_for_runs
from tests.eventgen import lifecycle, publish

STALE = 2  # heartbeat_stale_seconds here; the daemon beats every 0.5 s (tests/daemon_helpers.py)


class Fault:
    """A bug injected into a running source: while on, handing events over raises (the reader thread
    dies at the next event), and so does connecting (each restart dies too). With
    ``reconnect_error=ConnectionError`` the restarted thread finds the broker unreachable instead,
    and lives on, disconnected."""

    def __init__(self, source, reconnect_error=RuntimeError):
        self.on = True
        self.reconnect_error = reconnect_error
        self._deliver, self._connect = source.deliver, source.connect
        source.deliver, source.connect = self.deliver, self.connect

    def deliver(self, *args, **kwargs):
        if self.on:
            raise RuntimeError("injected fault")
        return self._deliver(*args, **kwargs)

    def connect(self):
        if self.on:
            raise self.reconnect_error("injected fault")
        return self._connect()

    def clear(self):
        self.on = False


def check(db_url) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["check", "--db", db_url, "--json"],
                                env={"TASKMON_HEARTBEAT_STALE_SECONDS": str(STALE)})
    return result.exit_code, json.loads(result.output)


def wait_check(db_url, code: int, what: str, timeout: float = 40.0, until=lambda data: True) -> dict:
    """Poll `taskmon check` until it exits ``code`` (and ``until`` holds); fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        got, data = check(db_url)
        if got == code and until(data):
            return data
        assert time.monotonic() < deadline, f"taskmon check did not exit {code} {what} in {timeout:.0f}s: {data}"
        time.sleep(0.1)


def wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def all_connected(data) -> bool:
    return bool(data["sources"]) and all(s["connected"] for s in data["sources"].values())


def test_a_source_killed_by_a_fault_fails_check_then_is_restarted_and_check_passes(redis_url, sqlite_url):
    with running_daemon(redis_url, sqlite_url, heartbeat_stale_seconds=STALE) as daemon:
        source = daemon.sources[0]
        client = redis.Redis.from_url(redis_url)
        wait_check(sqlite_url, 0, "with the source connected", until=all_connected)

        fault = Fault(source)
        publish(client, lifecycle())  # its delivery kills the reader thread
        killed = time.monotonic()
        data = wait_check(sqlite_url, 1, "after the reader thread was killed")
        print(f"taskmon check failed {time.monotonic() - killed:.1f}s after the kill (stale threshold {STALE}s)")
        assert "source pubsub" in data["reason"] and "injected fault" in data["reason"]
        assert not data["sources"]["pubsub"]["connected"] and daemon.feed_since() is None

        fault.clear()
        data = wait_check(sqlite_url, 0, "after the fault was cleared", until=all_connected)
        assert data["sources"]["pubsub"]["restarts"] >= 1
        assert source.counters.get("pubsub.crashed") >= 1
        assert daemon.supervisor.counters.get("pubsub.restarts") == data["sources"]["pubsub"]["restarts"]
        after = lifecycle()
        publish(client, after)
        assert wait_for_runs(daemon.engine, [after[0]["uuid"]], {"SUCCESS"})[after[0]["uuid"]]["state"] == "SUCCESS"
        with daemon.engine.connect() as conn:
            gaps = list_gaps(conn)
    assert [(g["source"], g["reason"]) for g in gaps] == [("pubsub", "source_crashed")]
    assert "injected fault" in gaps[0]["detail"]


def test_a_source_that_keeps_dying_makes_the_daemon_exit_1(redis_url, sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    daemon = Daemon(Settings(broker_url=redis_url, database_url=sqlite_url, event_sources=("pubsub",),
                             enable_events=False, status_interval=0.5, heartbeat_stale_seconds=STALE), engine)
    Fault(daemon.sources[0])  # every start of the reader thread dies at once
    guard = threading.Timer(120, daemon.stop)  # were it never to give up, serve() would return 0 here
    guard.start()
    try:
        code = daemon.serve()
    finally:
        guard.cancel()
    assert code == 1
    assert daemon.supervisor.counters.get("pubsub.restarts") == RESTART_LIMIT - 1
    with engine.connect() as conn:
        status = latest_status(conn)
    reason = f"the pubsub thread died {RESTART_LIMIT} times within 60s (RuntimeError: injected fault)"
    assert status["stopped_at"] is not None and status["stop_reason"] == reason
    code, data = check(sqlite_url)
    assert code == 1 and data["reason"].endswith(reason)
    engine.dispose()


def test_check_fails_while_redis_is_stopped_and_passes_once_it_is_back(fresh_redis, sqlite_url):
    with running_daemon(fresh_redis.url, sqlite_url, sources=("pubsub", "stream"),
                        heartbeat_stale_seconds=STALE) as daemon:
        wait_check(sqlite_url, 0, "with both sources connected", until=all_connected)
        fresh_redis.kill()
        stopped = time.monotonic()
        data = wait_check(sqlite_url, 1, "after Redis was stopped")
        print(f"taskmon check failed {time.monotonic() - stopped:.1f}s after Redis stopped (stale threshold {STALE}s)")
        assert "disconnected" in data["reason"]
        assert not any(s["connected"] for s in data["sources"].values()) and data["feed_since"] is None

        fresh_redis.start()  # the same port
        wait_check(sqlite_url, 0, "after Redis was started again", until=all_connected)
        after = lifecycle()
        publish(redis.Redis(port=fresh_redis.port), after)
        assert wait_for_runs(daemon.engine, [after[0]["uuid"]], {"SUCCESS"})[after[0]["uuid"]]["state"] == "SUCCESS"


def test_no_task_is_marked_lost_while_a_source_is_down(redis_url, sqlite_url, start_worker, celery_client):
    with running_daemon(redis_url, sqlite_url, detect_interval=0.25) as daemon:
        worker = start_worker(redis_url)
        task = celery_client(redis_url).send_task("sample.sleep", (20,))
        assert wait_for_runs(daemon.engine, [task.id], {"STARTED"})[task.id]["state"] == "STARTED"

        source = daemon.sources[0]
        fault = Fault(source, reconnect_error=ConnectionError)  # the worker's next heartbeat kills the reader
        wait_until(lambda: source.counters.get("pubsub.crashed") == 1, "the reader thread to die")
        # Silent for 3 x its grace (2 x its 2 s heartbeat interval), over a few dozen sweeps.
        sweeps = daemon.detector.counters.get("detect.sweeps")
        down_until = time.monotonic() + 12
        while time.monotonic() < down_until:
            time.sleep(0.25)
        with daemon.engine.connect() as conn:
            state = conn.execute(select(task_runs.c.state).where(task_runs.c.task_id == task.id)).scalar()
            status = conn.execute(select(workers.c.status).where(workers.c.hostname == worker.hostname)).scalar()
        assert (state, status) == ("STARTED", "online")
        assert daemon.detector.counters.get("detect.sweeps") > sweeps + 20 and daemon.feed_since() is None

        fault.clear()
        row = wait_for_runs(daemon.engine, [task.id], {"SUCCESS"}, timeout=40)[task.id]
        with daemon.engine.connect() as conn:
            letters = conn.execute(select(dead_letters)).all()
        counters = daemon.detector.counters.snapshot()
    assert row["state"] == "SUCCESS" and letters == []
    assert not counters.get("detect.lost")
    assert not counters.get("detect.workers_lost")
