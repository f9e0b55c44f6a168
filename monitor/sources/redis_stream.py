"""Events from the durable relay's Redis stream, read with a consumer group.

Entries are acknowledged (XACK) only after the writer committed them, so a daemon killed
with -9 finds them again as its pending entries on restart (its consumer name is stable);
entries left pending by a consumer that is gone (another daemon, killed: silent for
claim_idle_ms) are claimed (XCLAIM) at connect and every CLAIM_INTERVAL seconds. Redelivered events merge into the
same rows, so nothing is stored twice. Several daemons share the group, each entry read by one.
"""
from __future__ import annotations

import logging
import socket
import time
from datetime import datetime, timezone

import redis

from monitor.ingest.events import Malformed
from tasks.relay_format import FIELD, GAP_FIELD
from tasks.redact import mask_url
from monitor.sources import Source, decode_body
from monitor.sources.relay_gaps import ProducerSweep, gap_from_marker

log = logging.getLogger(__name__)

GROUP = "taskmon"
# How often a running daemon claims entries another consumer left pending for longer than claim_idle_ms.
CLAIM_INTERVAL = 5.0


def _id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisStreamSource(Source):
    name_prefix = "stream"
    durable = True
    connection_errors = (OSError, redis.RedisError)
    gap_reason = "redis_disconnect"

    def __init__(self, buffer, broker_url: str, *, stream: str = "taskmon:events", consumer: str | None = None,
                 count: int = 2000, claim_idle_ms: int = 15_000, **kwargs):
        super().__init__(buffer, **kwargs)
        self.broker_url = broker_url
        self.stream = stream
        self.consumer = consumer or f"taskmon-{socket.gethostname()}"
        self.count = count
        self.claim_idle_ms = claim_idle_ms
        self.client = redis.Redis.from_url(broker_url, socket_timeout=10, socket_connect_timeout=5)
        self.producers = ProducerSweep(self.client, stream)
        # The heartbeat thread's own connection: a reader blocked on a full buffer makes no Redis calls.
        self._keepalive_client = redis.Redis.from_url(broker_url, socket_timeout=2, socket_connect_timeout=2)

    def unreachable(self, exc: BaseException) -> str:
        return (f"cannot read the relay stream at {mask_url(self.broker_url)} ({exc}); retrying "
                "(nothing is lost: entries wait in Redis)")

    def connect(self) -> None:
        try:
            # From "0": events relayed before the first daemon ever ran are read too.
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._check_trimmed()

    def _check_trimmed(self) -> None:
        """Entries trimmed (MAXLEN) before the group read them are lost: record the gap.

        Redis 7 keeps ``max-deleted-entry-id``; on older servers the check is skipped.
        """
        info = self.client.xinfo_stream(self.stream)
        deleted = info.get("max-deleted-entry-id")
        group = next((g for g in self.client.xinfo_groups(self.stream)
                      if g["name"] in (GROUP, GROUP.encode())), None)
        if deleted is None or group is None:
            return
        last, lost_up_to = _id_tuple(group["last-delivered-id"]), _id_tuple(deleted)
        if lost_up_to > last:
            started = datetime.fromtimestamp(last[0] / 1000, timezone.utc)
            ended = datetime.fromtimestamp(lost_up_to[0] / 1000, timezone.utc)
            self.report_gap("stream_trimmed", started, ended_at=ended,
                            detail=f"{self.stream} was trimmed past entries the daemon had not read; raise relay_maxlen")

    def consume(self) -> None:
        self.producers.connected()
        # Our own pending entries first (delivered before a crash, never acknowledged).
        while not self.stopping.is_set():
            entries = self._read("0", block=None)
            if not entries:
                break
            self._handle(entries)
        self._claim_stale()
        next_claim = time.monotonic() + CLAIM_INTERVAL
        while not self.stopping.is_set():
            entries = self._read(">", block=1000)
            if entries:
                self._handle(entries)
            if time.monotonic() >= next_claim:
                self._claim_stale()
                next_claim = time.monotonic() + CLAIM_INTERVAL
            if vanished := self.producers.sweep_if_due():
                self.counters.incr("stream.relay_vanished", vanished)

    def _read(self, start: str, block: int | None) -> list:
        reply = self.client.xreadgroup(GROUP, self.consumer, {self.stream: start}, count=self.count, block=block)
        if not reply:
            return []
        return reply[0][1]

    def _claim_stale(self) -> None:
        """Take the pending entries of consumers that have been silent for claim_idle_ms: daemons that
        are gone. A live daemon reads every second, so its entries (and this one's own) stay where they are."""
        for other in self.client.xinfo_consumers(self.stream, GROUP):
            name = other["name"].decode() if isinstance(other["name"], bytes) else other["name"]
            if name == self.consumer or not other["pending"] or other["idle"] < self.claim_idle_ms:
                continue
            while not self.stopping.is_set():
                pending = self.client.xpending_range(self.stream, GROUP, min="-", max="+", count=self.count,
                                                     consumername=name, idle=self.claim_idle_ms)
                if not pending:
                    break
                entries = [e for e in self.client.xclaim(self.stream, GROUP, self.consumer, self.claim_idle_ms,
                                                         [p["message_id"] for p in pending]) if e is not None]
                if entries:
                    log.warning("claimed %d pending entries of %s, a consumer silent for %.0fs", len(entries), name,
                                other["idle"] / 1000)
                    self.counters.incr("stream.claimed", len(entries))
                    self._handle(entries)
                if len(pending) < self.count:
                    break

    def keepalive(self) -> None:
        """Reading one entry of this consumer's own history refreshes its ``idle`` in the group, so the other
        daemons do not take it for gone (and claim its pending entries) while its writer is behind."""
        if not self.connected.is_set():
            return
        try:
            self._keepalive_client.xreadgroup(GROUP, self.consumer, {self.stream: "0"}, count=1)
        except (redis.RedisError, OSError) as exc:
            self.counters.incr("stream.keepalive_errors")
            log.debug("stream keepalive: %s", exc)

    def _handle(self, entries: list) -> None:
        events: list = []
        ids = []
        for entry_id, fields in entries:
            ids.append(entry_id)
            if fields is None:  # deleted while pending
                continue
            payload = fields.get(FIELD)
            if payload is None and GAP_FIELD in fields:
                self._relay_gap(fields[GAP_FIELD])
                continue
            if payload is None:
                self.malformed("bad_envelope")
                continue
            self.collect(payload, decode_body, events)
        self.counters.incr("messages_received", len(entries))
        ack = self._acker(ids)
        if events:
            self.deliver(events, ack=ack)
        else:
            ack()

    def _relay_gap(self, raw: bytes) -> None:
        """A relay's report of events it could not deliver: recorded as a gap, before the events read with it."""
        try:
            gap = gap_from_marker(raw)
        except Malformed as exc:
            self.malformed(exc.reason)
            return
        self.counters.incr("stream.relay_gaps")
        self.counters.incr("stream.relay_dropped", gap.events_lost or 0)
        self.report_gap(gap.reason, gap.started_at, ended_at=gap.ended_at, events_lost=gap.events_lost,
                        detail=gap.detail)

    def _acker(self, ids: list):
        def ack() -> None:
            try:
                self.client.xack(self.stream, GROUP, *ids)
                self.counters.incr("stream.acked", len(ids))
            except (redis.RedisError, OSError) as exc:
                # Not acknowledged: redelivered later and merged into the same rows.
                log.warning("cannot acknowledge %d stream entries (%s); they will be read again", len(ids), exc)

        return ack


def pending_count(client: redis.Redis, stream: str) -> int:
    """Entries delivered to the group but not acknowledged (for tests and `taskmon check`)."""
    try:
        return int(client.xpending(stream, GROUP)["pending"])
    except redis.ResponseError:
        return 0

