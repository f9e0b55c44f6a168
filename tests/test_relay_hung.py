"""A Redis that accepts connections and never answers costs the app nothing: delay() does not wait,
tasks still run, what the relay dropped becomes a recorded gap, and relaying resumes by itself."""
import json
import os
import signal
import time
from contextlib import contextmanager

from click.testing import CliRunner
from sqlalchemy import select

from cli import cli
from monitor.redis_server import RedisServer
from storage.db import make_engine, upgrade
from storage.health import list_gaps
from storage.schema import task_runs
from tasks.relay import install
from tests.daemon_helpers import wait_for_runs
from tests.services import DaemonProcess


@contextmanager
def hung(server: RedisServer):
    """SIGSTOP: the kernel still accepts connections and takes the bytes; Redis answers nothing."""
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def wait_until(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def add_numbers(x, y):
    return x + y


def succeeded(worker, task_ids) -> bool:
    log = worker.log.read_text(errors="replace")
    return all(f"[{task_id}] succeeded" in log for task_id in task_ids)


def test_a_hung_relay_redis_never_slows_delay_and_its_drops_become_a_gap(fresh_redis, sqlite_url, tmp_path,
                                                                          start_worker, celery_client):
    relay_redis = RedisServer().start()  # the relay's own Redis; the broker stays healthy
    env = {"TASKMON_RELAY_URL": relay_redis.url}
    engine = make_engine(sqlite_url)
    upgrade(engine)
    daemon = DaemonProcess(fresh_redis.url, sqlite_url, "--source", "stream", logdir=tmp_path, env=env)
    try:
        daemon.wait_log("taskmon daemon")
        worker = start_worker(fresh_redis.url, app="tests.apps.relayed", pool="threads", concurrency=4, env=env)
        app = celery_client(fresh_redis.url)
        add = app.task(name="relayed.add")(add_numbers)
        relay = install(app, url=relay_redis.url, buffer_events=20, heartbeat=0.5)

        with hung(relay_redis):
            started = time.monotonic()
            ids = [add.delay(i, 1).id for i in range(100)]
            elapsed = time.monotonic() - started
            # Before the relay wrote in the background, each of these waited 5 s on the socket.
            assert elapsed < 1.0, f"100 delay() calls took {elapsed:.2f}s with the relay's Redis hung"
            wait_until("the worker to run all 100 tasks", lambda: succeeded(worker, ids))
            stats = relay.stats()
            assert stats["dropped"] > 0 and stats["buffered"] <= 20
            assert stats["accepted"] + stats["dropped"] == 100

        dropped = relay.stats()["dropped"]

        def dropped_gap():
            with engine.connect() as conn:
                return [g for g in list_gaps(conn) if g["reason"] == "relay_dropped" and str(os.getpid()) in g["detail"]]

        # One report, or several when the relay got a write through between drops: together, every drop.
        gaps = wait_until("the relay's drop reports in receiver_gaps to add up to its drop count",
                          lambda: (found := dropped_gap()) and sum(g["events_lost"] for g in found) == dropped and found)
        assert all(g["source"] == "stream" and g["ended_at"] >= g["started_at"] for g in gaps)

        # The worker's relay held its events (its buffer is large) and wrote them once Redis answered.
        rows = wait_for_runs(engine, ids, {"SUCCESS"}, timeout=60)
        assert {r["state"] for r in rows.values()} == {"SUCCESS"} and len(rows) == 100

        # Redis answers again: new events flow to the stream, no restart of anything.
        more = [add.delay(i, 2).id for i in range(10)]
        rows = wait_for_runs(engine, more, {"SUCCESS"}, timeout=30)
        assert all(r["sent_at"] is not None and r["args"] == f"({i}, 2)" for i, r in
                   enumerate(rows[task_id] for task_id in more)), "task-sent events from the app did not flow"
        assert relay.stats()["dropped"] == dropped

        def check_counters():
            result = CliRunner().invoke(cli, ["check", "--db", sqlite_url, "--json"])
            counters = json.loads(result.output)["counters"]
            return counters if counters.get("stream.relay_dropped") == dropped else None

        counters = wait_until("taskmon check --json to count the relay's drops", check_counters, timeout=20)
        assert counters["stream.relay_gaps"] == len(gaps)
        assert relay.close()
    finally:
        daemon.terminate()
        relay_redis.close()
