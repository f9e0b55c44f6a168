"""The daemon survives Redis going away, stops cleanly on SIGTERM, and `taskmon check` tells the truth."""
import json
import time

import orjson
import redis
from click.testing import CliRunner
from sqlalchemy import select

from cli import cli
from storage.db import make_engine, upgrade
from storage.health import list_gaps
from storage.schema import task_runs
from tests.daemon_helpers import running_daemon, wait_for_runs
from tests.eventgen import lifecycle, publish
from monitor.ingest.buffer import EventBuffer
from monitor.sources.redis_pubsub import RedisPubSubSource
from tests.services import DaemonProcess


def test_redis_restart_under_the_daemon_reconnects_and_records_the_gap(fresh_redis, sqlite_url):
    with running_daemon(fresh_redis.url, sqlite_url) as daemon:
        source = daemon.sources[0]
        client = redis.Redis(port=fresh_redis.port)
        before = lifecycle()
        publish(client, before)
        wait_for_runs(daemon.engine, [before[0]["uuid"]], {"SUCCESS"})

        fresh_redis.kill()
        deadline = time.monotonic() + 20
        while source.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not source.connected.is_set()
        fresh_redis.start()
        assert source.connected.wait(20), "did not reconnect by itself"

        after = lifecycle()
        publish(redis.Redis(port=fresh_redis.port), after)
        rows = wait_for_runs(daemon.engine, [after[0]["uuid"]], {"SUCCESS"})
        assert rows[after[0]["uuid"]]["state"] == "SUCCESS"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with daemon.engine.connect() as conn:
                gaps = list_gaps(conn)
            if gaps:
                break
            time.sleep(0.1)
    assert [g["reason"] for g in gaps] == ["redis_disconnect"]
    assert gaps[0]["source"] == "pubsub" and gaps[0]["ended_at"] > gaps[0]["started_at"]


def test_sigterm_flushes_and_exits_0_quickly_and_check_reports(fresh_redis, sqlite_url, tmp_path):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    runner = CliRunner()
    never = runner.invoke(cli, ["check", "--db", sqlite_url])
    assert never.exit_code == 1 and "no taskmon daemon" in never.output

    daemon = DaemonProcess(fresh_redis.url, sqlite_url, "--source", "pubsub", logdir=tmp_path)
    daemon.wait_log("subscribed to")
    client = redis.Redis(port=fresh_redis.port)
    events = [e for _ in range(500) for e in lifecycle()]
    for i in range(0, len(events), 50):
        publish(client, events[i:i + 50])
    deadline = time.monotonic() + 10
    alive = None
    while time.monotonic() < deadline:
        alive = runner.invoke(cli, ["check", "--db", sqlite_url, "--json"])
        if alive.exit_code == 0:
            break
        time.sleep(0.2)
    assert alive.exit_code == 0, alive.output
    assert json.loads(alive.output)["ok"] is True

    started = time.monotonic()
    assert daemon.terminate(timeout=15) == 0
    assert time.monotonic() - started < 10
    with engine.connect() as conn:
        states = conn.execute(select(task_runs.c.state)).scalars().all()
    assert len(states) == 500 and set(states) == {"SUCCESS"}
    stopped = runner.invoke(cli, ["check", "--db", sqlite_url])
    assert stopped.exit_code == 1 and "stopped at" in stopped.output


def test_a_stopping_pubsub_reader_first_reads_what_redis_had_published_to_it(fresh_redis):
    """Pub/sub keeps nothing: what Redis sent a subscriber that stops without reading it is gone.
    Told to stop before it read a byte, the reader still delivers every message published to it."""
    source = RedisPubSubSource(EventBuffer(1_000_000), fresh_redis.url)
    client = redis.Redis(port=fresh_redis.port)
    source.connect()
    try:
        deadline = time.monotonic() + 5
        while client.execute_command("PUBSUB", "NUMPAT") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        tasks = [lifecycle() for _ in range(2000)]
        pipe = client.pipeline(transaction=False)
        for events in tasks:
            publish(pipe, events)
        pipe.execute()
        source.stop()
        source.consume()
    finally:
        source.close()
    taken = source.buffer.take(10 ** 6, 0)
    uuids = {event["uuid"] for batch in taken.batches for event in orjson.loads(batch.encoded)}
    assert uuids == {events[0]["uuid"] for events in tasks}
    assert source.counters.snapshot()["messages_received"] == len(tasks)


def test_check_fails_on_a_stale_heartbeat_and_an_unreachable_database(sqlite_url):
    from datetime import datetime, timedelta, timezone

    from storage.health import write_status

    engine = make_engine(sqlite_url)
    upgrade(engine)
    old = datetime.now(timezone.utc) - timedelta(minutes=5)
    with engine.begin() as conn:
        write_status(conn, daemon_id="h:1", hostname="h", pid=1, sources="pubsub", started_at=old,
                     heartbeat_at=old, counters={})
    stale = CliRunner().invoke(cli, ["check", "--db", sqlite_url])
    assert stale.exit_code == 1 and "heartbeat is 300s old" in stale.output
    gone = CliRunner().invoke(cli, ["check", "--db", "postgresql+psycopg://x@127.0.0.1:1/none"])
    assert gone.exit_code == 1 and "cannot reach the database" in gone.output
    assert len(gone.output.strip().splitlines()) == 1


def test_daemon_start_after_downtime_records_a_gap(redis_url, sqlite_url):
    with running_daemon(redis_url, sqlite_url):
        pass
    time.sleep(1.5)
    with running_daemon(redis_url, sqlite_url) as daemon:
        deadline = time.monotonic() + 5
        gaps = []
        while not gaps and time.monotonic() < deadline:
            with daemon.engine.connect() as conn:
                gaps = list_gaps(conn)
            time.sleep(0.05)
    assert [g["reason"] for g in gaps] == ["daemon_down"]
