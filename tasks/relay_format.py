"""What the durable relay writes to Redis, read back by the daemon's stream source.

- ``<stream>``: entries with field ``e`` (an event or a list of events, JSON), or with field
  ``gap`` (JSON, ``gap_marker``): events a relay could not deliver (``relay_dropped``), or a
  relay process that vanished without its closing write (``relay_vanished``, added by the daemon);
- ``<stream>:producers``: a hash of the processes that write, producer id -> JSON
  (host, pid, ttl, buffer, seen: when it last wrote, epoch seconds);
- ``<stream>:alive:<producer>``: a key each producer keeps alive (``ttl`` seconds) while it
  runs, and deletes with its registration when it closes.
"""
from __future__ import annotations

import orjson

DEFAULT_STREAM = "taskmon:events"
FIELD = b"e"
GAP_FIELD = b"gap"
GAP_REASONS = ("relay_dropped", "relay_vanished")


def producers_key(stream: str) -> str:
    return f"{stream}:producers"


def alive_key(stream: str, producer: str) -> str:
    return f"{stream}:alive:{producer}"


def gap_marker(reason: str, producer: str, host: str, pid: int, started: float, ended: float,
               events_lost: int | None, *, buffer: int, error: str = "") -> bytes:
    """The JSON of a ``gap`` entry (times: epoch seconds; events_lost None: unknown)."""
    return orjson.dumps({"reason": reason, "producer": producer, "host": host, "pid": pid, "started": started,
                         "ended": ended, "events_lost": events_lost, "buffer": buffer, "error": error[:300]})
