"""The relay's background writer: one thread per process, pipelining buffered events to the stream.

Redis that is slow, hung or down costs this thread, never the application's: the socket
timeout is short, and after a failure a circuit breaker keeps the writer away from Redis for a
jittered, exponentially growing while (capped) instead of paying a timeout per event. Meanwhile
the buffer fills and the relay counts what it refuses; the next write that succeeds carries a
marker entry saying how many events were dropped and when.
"""
from __future__ import annotations

import logging
import math
import threading
import time

import orjson
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.backoff import compute_backoff
from tasks.redact import mask_url
from tasks.relay import ALIVE_BEATS, Drops, Relay
from tasks.relay_format import FIELD, GAP_FIELD, alive_key, gap_marker, producers_key

log = logging.getLogger(__name__)


class Breaker:
    """Closed: the writer writes. Open (after a failure): no attempt before ``retry_at``."""

    def __init__(self, base: float = 0.5, cap: float = 10.0):
        self.base = base
        self.cap = cap
        self.failures = 0
        self.retry_at = 0.0

    @property
    def closed(self) -> bool:
        return self.failures == 0

    def wait_time(self, now: float) -> float:
        return max(self.retry_at - now, 0.0)

    def failed(self, now: float) -> float:
        self.failures += 1
        delay = compute_backoff(self.failures - 1, first=self.base, cap=self.cap)
        self.retry_at = now + delay
        return delay

    def succeeded(self) -> bool:
        """Close the breaker; True if it was open."""
        was_open = self.failures > 0
        self.failures, self.retry_at = 0, 0.0
        return was_open


class RelayWriter(threading.Thread):
    def __init__(self, relay: Relay):
        super().__init__(name="taskmon-relay", daemon=True)
        self.relay = relay
        self.closing = threading.Event()
        self.breaker = Breaker(cap=min(10.0, relay.heartbeat * 2))
        self.client: redis.Redis | None = None
        self.last_error = ""
        self._retained: list[bytes] = []  # a batch whose write failed: written first next time
        self._last_beat = -math.inf
        ttl = relay.heartbeat * ALIVE_BEATS
        self._ttl_ms = int(ttl * 1000)
        self._info = {"host": relay.host, "pid": relay.pid, "ttl": ttl, "buffer": relay.buffer_events}

    def run(self) -> None:
        relay = self.relay
        # No retries inside redis-py: the breaker decides when to try again.
        self.client = redis.Redis.from_url(relay.url, socket_timeout=relay.socket_timeout,
                                           socket_connect_timeout=relay.socket_timeout, retry=Retry(NoBackoff(), 0))
        try:
            while not self.closing.is_set():
                try:
                    if self.breaker.closed:
                        if relay.wake.wait(max(relay.heartbeat - (time.monotonic() - self._last_beat), 0.0)):
                            # Let a few more events come: one pipeline round trip costs ~75 us of
                            # this process's CPU, however few entries it carries.
                            if relay.buffered() < relay.batch_size:
                                self.closing.wait(relay.linger)
                        relay.wake.clear()
                    else:
                        # Not relay.wake: every event sets it, and an open breaker has nothing to do with them.
                        self.closing.wait(self.breaker.wait_time(time.monotonic()))
                    if not self.closing.is_set():
                        self.flush()
                except Exception as exc:  # noqa: BLE001 - the writer must outlive its own faults: it runs in the app
                    relay.failed("the relay writer failed", exc)
                    self.closing.wait(1.0)
            self.finish()
        finally:
            self.client.close()

    def flush(self) -> bool:
        """Write the buffer out in pipelined batches; False when Redis failed (the breaker is then open)."""
        relay = self.relay
        while True:
            batch = self._retained or relay.take(relay.batch_size)
            drops = relay.pending_drops()
            beat = time.monotonic() - self._last_beat >= relay.heartbeat
            if not batch and drops is None and not beat:
                return True
            try:
                self._write(batch, drops, register=beat)
            except (redis.RedisError, OSError) as exc:
                self._retained = batch
                self._failed(exc)
                return False
            self._retained = []
            relay.delivered(len(batch), drops)
            if beat:
                self._last_beat = time.monotonic()
            if self.breaker.succeeded():
                log.warning("taskmon relay writes to %s again; %d events dropped so far in this process",
                            mask_url(relay.url), relay.dropped)
            if len(batch) < relay.batch_size:
                return True

    def finish(self) -> None:
        """At close: write everything (one try, even with the breaker open), then unregister."""
        relay = self.relay
        if not self.flush():
            log.warning("taskmon relay: %d events not written to %s at exit (%s); the daemon records the gap",
                        relay.buffered() + len(self._retained), mask_url(relay.url), self.last_error)
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hdel(producers_key(relay.stream), relay.producer)
            pipe.delete(alive_key(relay.stream, relay.producer))
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            log.warning("taskmon relay: cannot unregister %s (%s); the daemon will record a gap for it",
                        relay.producer, exc)

    def _write(self, batch: list[bytes], drops: Drops | None, *, register: bool) -> None:
        relay = self.relay
        pipe = self.client.pipeline(transaction=False)
        for payload in batch:
            pipe.xadd(relay.stream, {FIELD: payload}, maxlen=relay.maxlen, approximate=True)
        if drops is not None:
            marker = gap_marker("relay_dropped", relay.producer, relay.host, relay.pid, drops.first, drops.last,
                                drops.count, buffer=relay.buffer_events, error=self.last_error)
            pipe.xadd(relay.stream, {GAP_FIELD: marker}, maxlen=relay.maxlen, approximate=True)
        if register:
            pipe.hset(producers_key(relay.stream), relay.producer, self._info_now())
            pipe.set(alive_key(relay.stream, relay.producer), b"1", px=self._ttl_ms)
        pipe.execute()

    def _info_now(self) -> bytes:
        # "seen": when this producer last wrote, the start of the gap if it vanishes from here on.
        return orjson.dumps(dict(self._info, seen=time.time()))

    def _failed(self, exc: BaseException) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        was_closed = self.breaker.closed
        delay = self.breaker.failed(time.monotonic())
        if self.client is not None:
            self.client.connection_pool.disconnect()  # a hung connection is not reused
        if was_closed:
            log.error("taskmon relay cannot write to %s (%s); buffering up to %d events, then dropping and "
                      "counting them; next try in %.1fs", mask_url(self.relay.url), self.last_error,
                      self.relay.buffer_events, delay)
