"""Faults inside the relay stay inside it: a Redis that never answers is tried a handful of times,
not once per event; a broken event or argument is counted, never raised into the app."""
import logging
import socket
import threading
import time

import orjson
import pytest
import redis

from monitor.daemon import resolve_sources
from tasks.relay import DEFAULT_STREAM, FIELD, Relay, install, relay_options
from tasks.settings import SettingsError, load_settings


class SilentServer:
    """A TCP port that accepts connections and never answers: a stuck Redis, as a client sees it."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections.append(conn)  # held open, never read from or written to

    def close(self) -> None:
        self._stop.set()
        for conn in self.connections:
            conn.close()
        self.sock.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


def test_a_silent_redis_is_tried_a_few_times_while_events_are_dropped_and_counted(silent_server):
    relay = Relay(silent_server.url, buffer_events=100)
    sent, worst = 0, 0.0
    until = time.monotonic() + 3.0
    while time.monotonic() < until:
        started = time.perf_counter()
        relay.emit({"type": "task-succeeded", "uuid": f"t{sent}", "timestamp": time.time()})
        worst = max(worst, time.perf_counter() - started)
        sent += 1
        if sent % 100 == 0:
            time.sleep(0.001)
    stats = relay.stats()
    # First try, then retries after a doubling, jittered backoff: 1 s socket timeout + 0.25-0.5 s + ...
    assert 1 <= len(silent_server.connections) <= 3, f"{len(silent_server.connections)} connections in 3 s"
    assert stats["accepted"] + stats["dropped"] == sent and stats["buffered"] <= 100
    assert stats["dropped"] >= sent - 100 - relay.batch_size
    assert stats["writing"] is False and stats["errors"] == 0
    assert worst < 0.9, f"one emit waited {worst:.3f}s"  # never a socket timeout in the app's thread
    relay.close(timeout=3)


def test_nothing_raised_inside_the_relay_reaches_the_app(redis_url, celery_client, caplog):
    class BrokenRepr:
        def __repr__(self):
            raise RuntimeError("repr is broken")

    app = celery_client(redis_url)
    relay = install(app, url=redis_url)
    with caplog.at_level(logging.ERROR, logger="tasks.relay"):
        relay.remember_args("t-1", (BrokenRepr(),), {})
        relay.emit({1: "a key orjson refuses"})
        relay.emit(object())  # not an event at all
    assert relay.stats()["errors"] == 3
    assert len([r for r in caplog.records if r.name == "tasks.relay"]) == 1  # logged once, counted always
    result = app.send_task("relayed.add", (1, 2))
    assert relay.close(5)
    events = [orjson.loads(fields[FIELD]) for _, fields in redis.Redis.from_url(redis_url).xrange(DEFAULT_STREAM)
              if FIELD in fields]
    assert [e["uuid"] for e in events if e["type"] == "task-sent"] == [result.id]


def test_bad_relay_settings_in_the_environment_are_warned_about_not_raised(caplog):
    with caplog.at_level(logging.WARNING, logger="tasks.relay"):
        options = relay_options({"TASKMON_RELAY_MAXLEN": "lots", "TASKMON_RELAY_STREAM": "s1"})
    assert options == {"relay_stream": "s1"}
    assert "TASKMON_RELAY_MAXLEN" in caplog.text


def test_relay_url_must_be_redis_and_lets_the_daemon_read_the_stream_beside_rabbitmq():
    with pytest.raises(SettingsError, match="relay_url"):
        load_settings(environ={"TASKMON_RELAY_URL": "amqp://guest@localhost//"})
    assert load_settings(environ={"TASKMON_RELAY_URL": "redis://r:6379/1"}).settings.relay_url == "redis://r:6379/1"
    assert resolve_sources(("auto",), "amqp://guest@localhost//", "redis://r:6379/1") == ("amqp", "stream")
    assert resolve_sources(("auto",), "amqp://guest@localhost//") == ("amqp",)
    with pytest.raises(ValueError, match="relay_url"):
        resolve_sources(("stream",), "amqp://guest@localhost//")
