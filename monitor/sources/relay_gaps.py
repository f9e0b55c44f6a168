"""What the durable relay could not deliver, read back as gaps by the stream source.

Two kinds, both arriving as ``gap`` entries in the stream, so that they are recorded like
events (acknowledged after the commit) and only once:

- ``relay_dropped``: a process's relay refused events while Redis was slow or away, and says
  how many once it can write again;
- ``relay_vanished``: a process registered in ``<stream>:producers`` whose alive key expired
  without its closing write (kill -9, OOM killer). The sweep below adds the entry for it; a Lua
  script makes "unregister it and add the entry" one step, so two daemons never both do it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

import orjson
import redis

from monitor.ingest.events import Malformed
from tasks.relay_format import GAP_FIELD, GAP_REASONS, alive_key, gap_marker, producers_key

DEFAULT_TTL = 30.0  # for a registration without a readable ttl

# KEYS: producers hash, alive key, stream; ARGV: producer id, marker
_VANISH = """
if redis.call('exists', KEYS[2]) == 1 then return 0 end
if redis.call('hdel', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('xadd', KEYS[3], '*', ARGV[3], ARGV[2])
return 1
"""


@dataclass(frozen=True)
class RelayGap:
    reason: str
    started_at: datetime
    ended_at: datetime
    events_lost: int | None
    detail: str


def _time(value) -> datetime:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise Malformed("bad_relay_gap", "time")
    return datetime.fromtimestamp(value, timezone.utc)


def gap_from_marker(raw: bytes) -> RelayGap:
    """A ``gap`` entry -> the gap to record; Malformed if it is not one the relay writes."""
    try:
        marker = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Malformed("bad_relay_gap", "not_json") from None
    if not isinstance(marker, dict) or marker.get("reason") not in GAP_REASONS:
        raise Malformed("bad_relay_gap", "reason")
    lost = marker.get("events_lost")
    if lost is not None and (not isinstance(lost, int) or isinstance(lost, bool) or lost < 0):
        raise Malformed("bad_relay_gap", "events_lost")
    where = f"the relay in {marker.get('host')} pid {marker.get('pid')}"
    if marker["reason"] == "relay_dropped":
        why = f": {marker['error']}" if marker.get("error") else ""
        detail = (f"{where} dropped {lost} events: its buffer ({marker.get('buffer')}) was full while Redis "
                  f"was slow or unreachable{why}")
    else:
        detail = (f"{where} stopped without its closing write (killed?); events it held after its last "
                  f"write are lost: at most {marker.get('buffer')}")
    return RelayGap(marker["reason"], _time(marker.get("started")), _time(marker.get("ended")), lost, detail)


def _producer_info(raw: bytes) -> dict:
    """A producer's registration, with defaults for what is missing or unreadable."""
    out = {"host": "?", "pid": 0, "seen": time.time(), "ttl": DEFAULT_TTL, "buffer": 0}
    try:
        info = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return out
    if isinstance(info, dict):
        for key, types in (("host", str), ("pid", int), ("seen", (int, float)), ("ttl", (int, float)),
                           ("buffer", int)):
            value = info.get(key)
            if isinstance(value, types) and not isinstance(value, bool):
                out[key] = value
    return out


class ProducerSweep:
    """Finds relay producers that vanished, every ``interval`` seconds.

    A producer is declared vanished only after the daemon has been connected for its whole
    alive TTL: after an outage every live producer gets that long to write again.
    """

    def __init__(self, client: redis.Redis, stream: str, interval: float = 5.0):
        self.client = client
        self.stream = stream
        self.interval = interval
        self._connected_at = time.monotonic()
        self._next = 0.0
        self._vanish = client.register_script(_VANISH)

    def connected(self) -> None:
        self._connected_at = self._next = time.monotonic()

    def sweep_if_due(self) -> int:
        """Add a ``relay_vanished`` entry for each producer gone; how many were added."""
        now = time.monotonic()
        if now < self._next:
            return 0
        self._next = now + self.interval
        up_for = now - self._connected_at
        candidates = [(producer.decode(), info) for producer, raw in self.client.hscan_iter(producers_key(self.stream))
                      if up_for >= (info := _producer_info(raw))["ttl"]]
        if not candidates:
            return 0
        with self.client.pipeline(transaction=False) as pipe:
            for producer, _ in candidates:
                pipe.exists(alive_key(self.stream, producer))
            alive = pipe.execute()
        added = 0
        for (producer, info), is_alive in zip(candidates, alive):
            if is_alive:
                continue
            marker = gap_marker("relay_vanished", producer, info["host"], info["pid"], info["seen"], time.time(), None,
                                buffer=info["buffer"])
            keys = [producers_key(self.stream), alive_key(self.stream, producer), self.stream]
            added += int(self._vanish(keys=keys, args=[producer, marker, GAP_FIELD]))
        return added
