"""The relay per process: a forked child has its own buffer and writer, a normal exit writes what
is buffered, and a worker child killed with -9 is a recorded gap, not a silent loss."""
import os
import subprocess
import sys
import time

import orjson
import redis
from sqlalchemy import select

from monitor.redis_server import free_port
from storage.health import list_gaps
from storage.schema import task_runs
from tasks.relay import DEFAULT_STREAM, FIELD, Relay
from tasks.relay_format import producers_key
from tests.daemon_helpers import running_daemon
from tests.services import REPO


def stream_events(client: redis.Redis, stream: str = DEFAULT_STREAM) -> list[dict]:
    return [orjson.loads(fields[FIELD]) for _, fields in client.xrange(stream) if FIELD in fields]


def test_a_forked_child_relays_through_its_own_buffer_and_writer(redis_url):
    client = redis.Redis.from_url(redis_url)
    parent = Relay(redis_url, heartbeat=0.5)
    parent.emit({"type": "test-parent", "n": 1})
    deadline = time.monotonic() + 10
    while parent.stats()["written"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    pid = os.fork()  # the parent's writer thread is running: the child has none of it
    if pid == 0:
        code = 1
        try:
            parent.emit({"type": "test-child", "pid": os.getpid()})
            code = 0 if parent.close(5) and parent.stats()["written"] == 1 else 3
        finally:
            os._exit(code)
    parent.emit({"type": "test-parent", "n": 2})
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert parent.close(5)
    events = stream_events(client)
    assert [e["type"] for e in events].count("test-child") == 1
    assert [e["n"] for e in events if e["type"] == "test-parent"] == [1, 2]  # the child replayed nothing
    assert next(e for e in events if e["type"] == "test-child")["pid"] == pid
    assert client.hlen(producers_key(DEFAULT_STREAM)) == 0  # every process unregistered when it closed


EXITING_APP = """
import sys
from tasks.relay import install
from celery import Celery

app = Celery("exiting", broker=sys.argv[1], set_as_current=False)
relay = install(app, url=sys.argv[2])
for i in range(int(sys.argv[3])):
    relay.emit({"type": "test-exit", "n": i})
print(relay.stats()["buffered"], flush=True)
"""


def run_exiting_app(broker_url: str, relay_url: str, n: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", EXITING_APP, broker_url, relay_url, str(n)], env=env,
                          capture_output=True, text=True, timeout=30)


def test_a_normal_exit_writes_everything_the_relay_buffered(redis_url):
    done = run_exiting_app(redis_url, redis_url, 5000)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[0]) > 0, "nothing was left to write at exit: the test proves nothing"
    client = redis.Redis.from_url(redis_url)
    assert [e["n"] for e in stream_events(client)] == list(range(5000))
    assert client.hlen(producers_key(DEFAULT_STREAM)) == 0


def test_exit_with_redis_down_is_bounded_and_says_what_was_not_written(redis_url):
    down = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    done = run_exiting_app(redis_url, down, 100)
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert "events not written to" in done.stderr and "at exit" in done.stderr
    assert time.monotonic() - started < 15


def test_a_worker_child_killed_with_9_is_a_recorded_gap(fresh_redis, sqlite_url, start_worker, celery_client):
    with running_daemon(fresh_redis.url, sqlite_url, sources=("stream",)) as daemon:
        worker = start_worker(fresh_redis.url, app="tests.apps.relayed", pool="prefork", concurrency=1,
                              env={"RELAY_HEARTBEAT": "0.5"})
        app = celery_client(fresh_redis.url)
        app.send_task("relayed.fanout_then_die", (30, 30))

        deadline = time.monotonic() + 60
        gaps, rows = [], []
        while time.monotonic() < deadline:
            with daemon.engine.connect() as conn:
                gaps = [g for g in list_gaps(conn) if g["reason"] == "relay_vanished"]
                rows = conn.execute(select(task_runs).where(task_runs.c.name == "relayed.add")).mappings().all()
            if gaps and len(rows) == 60 and all(r["state"] == "SUCCESS" for r in rows):
                break
            time.sleep(0.2)
        assert len(gaps) == 1, f"no relay_vanished gap recorded; worker log:\n{worker.log.read_text()[-2000:]}"
        gap = gaps[0]
        assert gap["source"] == "stream" and gap["events_lost"] is None
        assert "stopped without its closing write" in gap["detail"] and "at most 10000" in gap["detail"]
        assert gap["ended_at"] >= gap["started_at"]
        assert f"pid {worker.proc.pid} " not in gap["detail"], "the worker's main process is alive: not it"
        # Every subtask ran and is stored once; the events the child wrote before it died are all there.
        assert len(rows) == 60 and {r["state"] for r in rows} == {"SUCCESS"}
        by_arg = {r["args"]: r for r in rows}
        assert all(by_arg[f"({i}, 0)"]["sent_at"] is not None for i in range(30))
        assert daemon.counters()["stream.relay_vanished"] == 1
        assert "SIGKILL" in worker.log.read_text(errors="replace")
