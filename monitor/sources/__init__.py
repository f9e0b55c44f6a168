"""Event sources: each does socket I/O and decoding only, and hands event lists to the buffer."""
from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
from datetime import datetime, timezone
from typing import Callable

import orjson
import pybase64

from monitor.ingest.buffer import EventBuffer, Gap
from monitor.ingest.events import Malformed
from monitor.supervisor import Service
from tasks.backoff import compute_backoff

log = logging.getLogger(__name__)


def decode_kombu_message(data: bytes) -> list:
    """A kombu message as the Redis transport publishes it -> the event dicts in its body.

    The body is one event, or a list of them (``task.multi``, sent by prefork workers).
    """
    try:
        envelope = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise Malformed("invalid_utf8" if "utf-8" in str(exc).lower() else "not_json") from None
    if not isinstance(envelope, dict):
        raise Malformed("not_dict", "envelope")
    body = envelope.get("body")
    properties = envelope.get("properties")
    if not isinstance(body, str) or not isinstance(properties, dict):
        raise Malformed("bad_envelope")
    content_type = envelope.get("content-type", "application/json")
    if content_type != "application/json":
        raise Malformed("unsupported_content_type", str(content_type)[:60])
    if properties.get("body_encoding") == "base64":
        try:
            raw = pybase64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise Malformed("bad_encoding") from None
    else:
        raw = body.encode("utf-8", "surrogatepass")
    return decode_body(raw)


def decode_body(raw: bytes) -> list:
    """JSON event or list of events -> list (elements are validated later, by the writer)."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise Malformed("invalid_utf8" if "utf-8" in str(exc).lower() else "not_json") from None
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict):
        return [payload]
    raise Malformed("not_dict", type(payload).__name__)


class Source(Service):
    """A reader thread: connect, consume; on a connection error count it, note the gap, back off and
    try again (the loop of kombu's ConsumerMixin.run). Subclasses only connect, consume and close."""

    name_prefix = "source"
    durable = False  # durable sources wait for buffer space; others drop and count
    connection_errors: tuple[type[BaseException], ...] = (OSError,)
    gap_reason = "disconnect"  # receiver_gaps.reason of an interval the connection was lost

    def __init__(self, buffer: EventBuffer, *, max_message_bytes: int = 16 * 1024 * 1024):
        super().__init__(self.name_prefix)
        self.buffer = buffer
        self.max_message_bytes = max_message_bytes
        self.connected = threading.Event()
        self.since = datetime.now(timezone.utc)  # when it last connected, or lost its connection
        self._down: tuple[datetime, str, str] | None = None  # a lost connection: since, reason, error
        self._told_unreachable = False  # the "cannot connect" line is logged once per outage
        self._overflow_since: datetime | None = None
        self._overflow_dropped = 0

    def connect(self) -> None:  # pragma: no cover - abstract
        """Open the connection and subscribe; raise one of ``connection_errors`` when the broker is away."""
        raise NotImplementedError

    def consume(self) -> None:  # pragma: no cover - abstract
        """Read and deliver until ``stopping`` is set; raise one of ``connection_errors`` when the connection drops."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the connection after consume ended or failed; never raises."""

    def unreachable(self, exc: BaseException) -> str:
        """The log line for a broker that cannot be reached: what failed and what to do."""
        return f"{self.name}: cannot connect ({exc}); retrying"

    def run(self) -> None:
        failures = 0
        try:
            while not self.stopping.is_set():
                try:
                    self.connect()
                    self._connected()
                    failures = 0
                    self.consume()
                except self.connection_errors as exc:
                    self._lost(exc, self.gap_reason)
                    self.stopping.wait(compute_backoff(failures, first=0.1, cap=5.0))
                    failures += 1
                finally:
                    self.close()
        except Exception as exc:
            self._lost(exc, "source_crashed")
            raise
        finally:
            self.connected.clear()

    def state(self) -> dict:
        """What the heartbeat records of this source (``taskmon check`` judges it)."""
        return {"connected": self.connected.is_set() and self.is_alive(), "since": self.since.isoformat(),
                "alive": self.is_alive(), "restarts": max(self.starts - 1, 0), "error": self.last_error}

    def _connected(self) -> None:
        if self._down is not None:
            started, reason, error = self._down
            self._down = None
            self.report_gap(reason, started, events_lost=0 if self.durable else None, detail=error)
        self.counters.incr(f"{self.name}.connects")
        self.last_error = ""
        self._told_unreachable = False
        self.since = datetime.now(timezone.utc)
        self.connected.set()

    def _lost(self, exc: BaseException, reason: str) -> None:
        """Not connected (any more): from now on the feed is not live, and the heartbeat says so."""
        error = f"{type(exc).__name__}: {exc}"[:500]
        self.last_error = error
        if self.connected.is_set():
            self.connected.clear()
            self.since = datetime.now(timezone.utc)
            self._down = (self.since, reason, error)
            self.counters.incr(f"{self.name}.disconnects")
            if reason != "source_crashed":  # a crash is logged with its traceback by the thread
                log.warning("%s: lost the connection (%s); reconnecting", self.name, error)
            return
        if reason == "source_crashed":
            if self._down is not None:
                self._down = (self._down[0], reason, error)
            return
        self.counters.incr(f"{self.name}.connect_errors")
        if not self._told_unreachable:
            self._told_unreachable = True
            log.error("%s", self.unreachable(exc))

    def after_flush(self) -> None:
        """Called once the writer has flushed its last batch and the reader thread has ended."""

    def keepalive(self) -> None:
        """Called from the daemon's heartbeat thread: tell the broker this consumer is alive even while its
        reader waits for buffer space (a shared durable source); never raises."""

    def malformed(self, reason: str) -> None:
        self.counters.incr(f"malformed.{reason}")

    def collect(self, payload: bytes, decode: Callable[[bytes], list], out: list) -> None:
        """Add the events ``decode`` finds in one message to ``out``; count an oversize or malformed one instead."""
        if len(payload) > self.max_message_bytes:
            self.malformed("oversize")
            return
        try:
            out.extend(decode(payload))
        except Malformed as exc:
            self.malformed(exc.reason)

    def deliver(self, events: list, ack=None) -> bool:
        """Hand events to the writer; a non-durable source counts what a full buffer refuses."""
        from monitor.ingest.buffer import Batch

        if not events:
            return True
        self.counters.incr("events_received", len(events))
        ok = self.buffer.put(Batch.encode(self.name_prefix, events, ack), block=self.durable, stop=self.stopping)
        if ok:
            if self._overflow_since is not None:
                self.report_gap("overflow", self._overflow_since, events_lost=self._overflow_dropped,
                                detail="internal buffer full: the database could not keep up or was unreachable")
                self._overflow_since, self._overflow_dropped = None, 0
            return True
        self.counters.incr("events_dropped", len(events))
        if self._overflow_since is None:
            self._overflow_since = datetime.now(timezone.utc)
            log.error("%s: buffer full (%d events), dropping events until the writer catches up",
                      self.name_prefix, self.buffer.max_events)
        self._overflow_dropped += len(events)
        return False

    def report_gap(self, reason: str, started_at: datetime, *, events_lost: int | None = None, detail: str = "",
                   ended_at: datetime | None = None) -> None:
        gap = Gap(self.name_prefix, reason, started_at, ended_at or datetime.now(timezone.utc), events_lost, detail)
        log.warning("%s: events may be lost between %s and %s (%s%s)", self.name_prefix, gap.started_at.isoformat(),
                    gap.ended_at.isoformat(), reason, f", {events_lost} dropped" if events_lost else "")
        self.buffer.put_control(gap)


def encode_kombu_message(body: bytes, routing_key: str, *, hostname: str = "taskmon") -> bytes:
    """The inverse of decode_kombu_message: a message exactly as kombu's Redis transport publishes it.

    Used by bench/ingest and the tests to publish real-format events at rates kombu's own
    producer cannot reach.
    """
    return orjson.dumps({
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": hostname},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": base64.b32encode(os.urandom(10)).decode(),
        },
    })
