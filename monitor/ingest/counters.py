"""Thread-safe counters each component owns; the daemon sums them for logs and `taskmon check`."""
from __future__ import annotations

import threading
from collections import Counter


class Counters:
    def __init__(self) -> None:
        self._counts: Counter = Counter()
        self._lock = threading.Lock()

    def incr(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def get(self, key: str) -> int:
        with self._lock:
            return self._counts[key]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def merged(*counters: Counters) -> dict[str, int]:
    total: Counter = Counter()
    for c in counters:
        total.update(c.snapshot())
    return dict(sorted(total.items()))
