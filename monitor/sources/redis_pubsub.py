"""Celery events from Redis pub/sub, the way kombu's Redis transport publishes them.

kombu publishes each event on ``/{db}.celeryev/{routing_key}`` (``fanout_prefix`` and
``fanout_patterns`` are on by default since celery 4), so one PSUBSCRIBE to
``/{db}.celeryev/*`` sees every event of that virtual host.

Redis disconnects a subscriber whose output buffer passes ``client-output-buffer-limit
pubsub`` (32 MB by default), and whatever it published meanwhile is gone. So this thread
reads the socket in large chunks, parses with hiredis, decodes with orjson, and hands the
events on without ever waiting for the database.
"""
from __future__ import annotations

import logging
import socket
import time

import hiredis
import redis

from tasks.redact import mask_url
from monitor.sources import Source, decode_kombu_message

log = logging.getLogger(__name__)

PING = b"*1\r\n$4\r\nPING\r\n"
RECV_BYTES = 1 << 20
# hiredis moves what is left of its buffer to the front each time it has parsed 1 kB, so a
# whole 1 MB read fed at once cost ~5 us per message in those moves; fed in slices, 0.4.
FEED_BYTES = 16 << 10
# After a short read, wait this long before the next: at 40,000 messages/s reads of ~25 kB came
# 1,500 times a second, each paying a poll, a recv, a buffer hand-off and a wake-up of the writer.
# Redis holds what comes meanwhile (tens of kB, against its 32 MB limit).
READ_PAUSE = 0.002
# On stop, how long to keep reading what Redis had already published to this subscriber (within
# the half of stop_timeout, 8 s by default, the daemon gives its sources).
DRAIN_SECONDS = 3.0


def event_pattern(broker_url: str) -> str:
    db = redis.connection.parse_url(broker_url).get("db", 0) or 0
    return f"/{db}.celeryev/*"


class RedisPubSubSource(Source):
    name_prefix = "pubsub"
    connection_errors = (OSError, redis.RedisError, hiredis.ProtocolError)
    gap_reason = "redis_disconnect"

    def __init__(self, buffer, broker_url: str, *, ping_interval: float = 5.0, **kwargs):
        super().__init__(buffer, **kwargs)
        self.broker_url = broker_url
        self.pattern = event_pattern(broker_url)
        self.ping_interval = ping_interval
        self._conn: redis.Connection | None = None
        self._sock: socket.socket | None = None
        self._unsubscribed = False  # stopping, Redis confirmed the PUNSUBSCRIBE

    def connect(self) -> None:
        # redis-py does the handshake (TLS, AUTH, HELLO); then we own the raw socket.
        conn = redis.Redis.from_url(self.broker_url, socket_connect_timeout=5).connection_pool.make_connection()
        self._conn = conn
        conn.connect()
        sock = conn._sock
        pattern = self.pattern.encode()
        sock.sendall(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(pattern), pattern))
        sock.settimeout(0.5)
        self._sock = sock

    def consume(self) -> None:
        self._read(self._sock)

    def close(self) -> None:
        self._sock = None
        if self._conn is not None:
            try:
                self._conn.disconnect()
            except OSError as exc:
                log.debug("closing the Redis subscription: %s", exc)
            self._conn = None

    def unreachable(self, exc: BaseException) -> str:
        return f"cannot reach Redis at {mask_url(self.broker_url)} ({exc}): start it or set TASKMON_BROKER_URL; retrying"

    def _read(self, sock: socket.socket) -> None:
        reader = hiredis.Reader()
        self._unsubscribed = False
        last_data = last_ping = time.monotonic()
        while not self.stopping.is_set():
            try:
                data = sock.recv(RECV_BYTES)
            except (socket.timeout, TimeoutError):
                now = time.monotonic()
                if now - last_data > 3 * self.ping_interval:
                    raise ConnectionError(f"no reply from Redis for {now - last_data:.0f}s")
                if now - last_ping > self.ping_interval:
                    sock.sendall(PING)
                    last_ping = now
                continue
            if not data:
                raise ConnectionError("Redis closed the connection")
            last_data = time.monotonic()
            self._parse(reader, data)
            if len(data) < RECV_BYTES // 4:
                time.sleep(READ_PAUSE)
        self._drain(sock, reader)

    def _drain(self, sock: socket.socket, reader: hiredis.Reader) -> None:
        """Stopping: unsubscribe, and read up to Redis's confirmation. Redis sends it after every
        message it published to this connection before, so what is still in the socket or in
        Redis's output buffer is delivered, and the writer stores it before the daemon exits."""
        pattern = self.pattern.encode()
        deadline = time.monotonic() + DRAIN_SECONDS
        try:
            sock.sendall(b"*2\r\n$12\r\nPUNSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(pattern), pattern))
            while not self._unsubscribed and time.monotonic() < deadline:
                try:
                    data = sock.recv(RECV_BYTES)
                except (socket.timeout, TimeoutError):
                    continue
                if not data:
                    break
                self._parse(reader, data)
        except (OSError, redis.RedisError, hiredis.ProtocolError) as exc:
            log.warning("pubsub reader: the connection failed while reading what Redis still held: %s", exc)
            return
        if self._unsubscribed:
            log.info("pubsub reader stopped: read everything Redis had published to it")
        else:
            log.warning("pubsub reader stopped after %.0f s without Redis confirming the unsubscribe; "
                        "what it still held is lost", DRAIN_SECONDS)

    def _parse(self, reader: hiredis.Reader, data: bytes) -> None:
        """One read's replies: its messages are decoded and delivered together; the (un)subscribe
        confirmations noted."""
        payloads: list = []
        for start in range(0, len(data), FEED_BYTES):
            reader.feed(data, start, min(FEED_BYTES, len(data) - start))
            while True:
                reply = reader.gets()
                if reply is False:
                    break
                if isinstance(reply, hiredis.ReplyError):
                    raise redis.ResponseError(str(reply))
                if not isinstance(reply, list) or not reply:
                    continue
                kind = reply[0]
                if kind == b"pmessage" and len(reply) == 4:
                    payloads.append(reply[3])
                elif kind == b"psubscribe":
                    log.info("subscribed to %s on %s", self.pattern, mask_url(self.broker_url))
                elif kind == b"punsubscribe":
                    self._unsubscribed = True
        if payloads:
            self._decode(payloads)

    def _decode(self, payloads: list) -> None:
        """The messages of one read -> their events, delivered together (counted once per read, not
        per message: the counters' lock was a twentieth of this thread's time)."""
        self.counters.incr("messages_received", len(payloads))
        events: list = []
        for payload in payloads:
            self.collect(payload, decode_kombu_message, events)
        if events:
            self.deliver(events)
