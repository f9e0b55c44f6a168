"""`taskmon check` judges the newest heartbeat: fresh, every source connected, the writer keeping up.

The heartbeat's per-source state and the writer's lag are columns of daemon_status (migration 0008),
written and read back the same on SQLite and PostgreSQL.
"""
import json
from datetime import datetime, timedelta, timezone

from alembic import command
from click.testing import CliRunner
from sqlalchemy import insert, inspect

from cli import cli
from monitor.health import judge, listening_since
from storage.db import _alembic_config, current_revision, upgrade
from storage.health import latest_status, write_status
from storage.schema import daemon_status

NOW = datetime(2026, 11, 23, 6, 0, 0, tzinfo=timezone.utc)
STALE = 30


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def source(connected=True, since=600, alive=True, error=""):
    return {"connected": connected, "since": ago(since).isoformat(), "alive": alive, "restarts": 0, "error": error}


def status(heartbeat=1, sources=None, lag=0.0, stopped=None, stop_reason=None, feed_since=600):
    return {"daemon_id": "h:1", "heartbeat_at": ago(heartbeat), "stopped_at": ago(stopped) if stopped else None,
            "stop_reason": stop_reason, "source_states": {"pubsub": source()} if sources is None else sources,
            "writer_lag": lag, "feed_since": ago(feed_since) if feed_since is not None else None, "counters": {}}


def test_a_fresh_heartbeat_with_every_source_connected_and_the_writer_caught_up_is_healthy():
    health = judge(status(sources={"pubsub": source(), "stream": source()}), NOW, STALE)
    assert health.ok and health.reason == "daemon h:1 alive, heartbeat 1s ago"


def test_a_source_down_for_longer_than_the_threshold_fails_and_a_short_reconnect_does_not():
    assert judge(status(sources={"pubsub": source(connected=False, since=5)}), NOW, STALE).ok
    down = judge(status(sources={"pubsub": source(), "stream": source(connected=False, since=31,
                                                                     error="ConnectionError: refused")}), NOW, STALE)
    assert not down.ok
    assert down.reason == "daemon h:1: source stream disconnected for 31s (limit 30s): ConnectionError: refused"
    dead = judge(status(sources={"pubsub": source(connected=False, alive=False, since=45)}), NOW, STALE)
    assert not dead.ok and "source pubsub thread is dead for 45s" in dead.reason


def test_a_writer_behind_fails_and_so_do_a_stale_or_stopped_daemon():
    behind = judge(status(lag=42.0), NOW, STALE)
    assert not behind.ok and "the writer is 42s behind (limit 30s)" in behind.reason
    assert judge(status(lag=2.0), NOW, STALE).ok
    stale = judge(status(heartbeat=31), NOW, STALE)
    assert not stale.ok and "heartbeat is 31s old" in stale.reason
    stopped = judge(status(stopped=10, stop_reason="the pubsub thread died 5 times within 60s"), NOW, STALE)
    assert not stopped.ok and stopped.reason.endswith(": the pubsub thread died 5 times within 60s")


def test_a_daemon_listens_only_while_its_heartbeat_is_fresh():
    assert listening_since(status(feed_since=600), NOW, STALE) == ago(600)
    assert listening_since(status(feed_since=None), NOW, STALE) is None
    assert listening_since(status(heartbeat=31), NOW, STALE) is None
    assert listening_since(status(stopped=5), NOW, STALE) is None
    assert listening_since(None, NOW, STALE) is None


def write(engine, **kwargs):
    values = dict(daemon_id="h:1", hostname="h", pid=1, sources="pubsub,stream", started_at=ago(700),
                  heartbeat_at=ago(1), counters={"events_received": 7})
    values.update(kwargs)
    with engine.begin() as conn:
        write_status(conn, **values)


def test_the_heartbeat_keeps_each_sources_state_and_the_writer_lag(engine):
    states = {"pubsub": source(), "stream": source(connected=False, since=40, error="TimeoutError: timed out")}
    write(engine, source_states=states, writer_lag=0.25, feed_since=ago(600))
    write(engine, heartbeat_at=ago(0.5), source_states=states, writer_lag=0.5, feed_since=None)  # the next beat
    with engine.connect() as conn:
        row = latest_status(conn)
    assert row["source_states"] == states and row["writer_lag"] == 0.5 and row["feed_since"] is None
    assert row["counters"] == {"events_received": 7} and row["stop_reason"] is None
    health = judge(row, NOW, STALE)
    assert not health.ok and "source stream disconnected for 40s" in health.reason


def test_migration_0008_adds_the_columns_and_its_downgrade_removes_them(engine):
    command.downgrade(_alembic_config(engine), "0007")
    assert current_revision(engine) == "0007"
    columns = {c["name"] for c in inspect(engine).get_columns("daemon_status")}
    assert not {"source_states", "writer_lag", "feed_since", "stop_reason"} & columns
    with engine.begin() as conn:  # a row as a daemon of before 0008 wrote it
        conn.execute(insert(daemon_status).values(daemon_id="old:1", hostname="old", pid=1, sources="pubsub",
                                                  started_at=ago(3600), heartbeat_at=ago(1), counters="{}"))
    upgrade(engine)
    with engine.connect() as conn:
        row = latest_status(conn)
    assert row["daemon_id"] == "old:1" and row["source_states"] is None and row["writer_lag"] is None
    assert judge(row, NOW, STALE).ok  # judged on what it recorded


def test_check_json_shows_each_source(sqlite_url):
    from storage.db import make_engine

    engine = make_engine(sqlite_url)
    upgrade(engine)
    now = datetime.now(timezone.utc)
    write(engine, heartbeat_at=now, started_at=now - timedelta(minutes=5), writer_lag=0.1, feed_since=now,
          source_states={"pubsub": {"connected": True, "since": now.isoformat(), "alive": True, "restarts": 1,
                                    "error": ""}})
    result = CliRunner().invoke(cli, ["check", "--db", sqlite_url, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] is True and data["sources"]["pubsub"]["connected"] is True
    assert data["sources"]["pubsub"]["restarts"] == 1 and data["writer_lag"] == 0.1 and data["feed_since"]
