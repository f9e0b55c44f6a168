"""The bounded hand-off between source threads and the writer thread.

Sources put the events of each read, decoded (so they are counted and checked) and written back
as one compact orjson array; the writer takes them in batches. A full buffer either
drops the batch (pub/sub: the broker will not keep it anyway; the drop is counted and
reported as a gap) or makes the source wait (durable sources: the broker keeps the events).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

import orjson


@dataclass(frozen=True)
class Gap:
    """An interval in which events may have been lost (a control item: the writer records it)."""

    source: str
    reason: str
    started_at: datetime
    ended_at: datetime | None
    events_lost: int | None = None
    detail: str = ""


@dataclass
class Batch:
    """Events of one read: a list, or (``Batch.encode``) the same as an orjson array in ``encoded``.

    Encoded, an event waits in a quarter of the memory a dict takes, and the writer hands it to
    its helper process without another serialization.
    """

    source: str
    events: list = field(default_factory=list)
    ack: Callable[[], None] | None = None
    put_at: float = 0.0  # time.monotonic() when the buffer took it (set by EventBuffer.put)
    encoded: bytes = b""
    size: int = -1  # how many events (set from ``events`` when not given)

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.events)

    @classmethod
    def encode(cls, source: str, events: list, ack: Callable[[], None] | None = None) -> "Batch":
        """Events as sources decode them (orjson gives back exactly what it parsed)."""
        try:
            return cls(source, ack=ack, encoded=orjson.dumps(events), size=len(events))
        except orjson.JSONEncodeError:  # values orjson did not parse (a caller's own): kept as they are
            return cls(source, events, ack)

    @property
    def piece(self) -> bytes | list:
        """What the writer prepares: the orjson array, or the list."""
        return self.encoded or self.events


@dataclass
class Taken:
    batches: list[Batch] = field(default_factory=list)
    controls: list[Any] = field(default_factory=list)  # gaps and other non-event items

    @property
    def events(self) -> int:
        return sum(b.size for b in self.batches)


class EventBuffer:
    def __init__(self, max_events: int):
        self.max_events = max_events
        self._items: deque = deque()
        self._size = 0
        self._cond = threading.Condition()
        self.closed = False

    def __len__(self) -> int:
        return self._size

    def put(self, batch: Batch, block: bool = False, stop: threading.Event | None = None) -> bool:
        """Add a batch; False when it was refused because the buffer is full (non-blocking)."""
        n = batch.size
        with self._cond:
            while self._size + n > self.max_events and self._size > 0:
                if not block or (stop is not None and stop.is_set()):
                    return False
                self._cond.wait(0.2)
            batch.put_at = time.monotonic()
            self._items.append(batch)
            self._size += n
            self._cond.notify_all()
        return True

    def put_control(self, item: Any) -> None:
        """Gaps and other records that must never be dropped."""
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def oldest_put_at(self) -> float | None:
        """When the oldest batch still waiting was put (monotonic), None if none waits."""
        with self._cond:
            return next((item.put_at for item in self._items if isinstance(item, Batch)), None)

    def take(self, max_events: int, timeout: float) -> Taken:
        """Up to ``max_events`` events (whole batches), waiting at most ``timeout`` for the first."""
        deadline = time.monotonic() + timeout
        out = Taken()
        taken = 0
        with self._cond:
            while not self._items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return out
                self._cond.wait(remaining)
            while self._items and taken < max_events:
                item = self._items.popleft()
                if isinstance(item, Batch):
                    out.batches.append(item)
                    taken += item.size
                    self._size -= item.size
                else:
                    out.controls.append(item)
            self._cond.notify_all()
        return out
