"""The daemon's threads, and the supervisor that keeps them running.

Like huey's consumer, the daemon checks every thread it started, often: a reader thread that
died of a bug would otherwise leave the daemon running deaf while `taskmon check` stays green.
A dead thread is restarted after a backoff, counted and logged; one that keeps dying stops the
daemon with a non-zero exit, so that systemd or supervisor restart the whole process.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

from monitor.ingest.counters import Counters
from tasks.backoff import compute_backoff

log = logging.getLogger(__name__)

# A thread that dies this many times within the window stops the daemon.
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
# Restart delays: from 1 s, doubling per recent death (a bug that kills a thread at once does
# not spin), up to 30 s.
RESTART_FIRST_DELAY = 1.0
RESTART_MAX_DELAY = 30.0


class Service:
    """A loop in a thread of its own that can be started again after it died (a Thread cannot)."""

    def __init__(self, name: str):
        self.name = name
        self.counters = Counters()
        self.stopping = threading.Event()
        self.starts = 0
        self.last_error = ""
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.starts += 1
        self._thread = threading.Thread(target=self._main, name=f"taskmon-{self.name}", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def ident(self) -> int | None:
        """The running thread's identifier (for its CPU clock: time.pthread_getcpuclockid)."""
        return self._thread.ident if self._thread is not None else None

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self) -> None:
        self.stopping.set()

    def _main(self) -> None:
        try:
            self.run()
        except Exception as exc:  # reported here; the supervisor sees the thread gone and restarts it
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            self.counters.incr(f"{self.name}.crashed")
            log.exception("the %s thread crashed", self.name)

    def run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class Periodic(Service):
    """Calls ``job`` every ``interval`` seconds, the first time at once when ``at_start``.

    One call at a time, each ``interval`` after the previous one ended: a slow call delays the
    next instead of piling up behind it.
    """

    def __init__(self, name: str, interval: float, job: Callable[[], object], *, at_start: bool = False):
        super().__init__(name)
        self.interval = interval
        self.job = job
        self.at_start = at_start

    def run(self) -> None:
        if self.at_start and not self.stopping.is_set():
            self.job()
        while not self.stopping.wait(self.interval):
            self.job()


class Watchable(Protocol):
    def start(self) -> None: ...

    def is_alive(self) -> bool: ...


@dataclass
class Watched:
    name: str
    thread: Watchable
    restart: bool
    deaths: deque = field(default_factory=deque)  # monotonic times, within the window
    restart_at: float | None = None


class Supervisor:
    """Restarts dead threads; ``check`` returns why the daemon must stop, or None."""

    def __init__(self, *, limit: int = RESTART_LIMIT, window: float = RESTART_WINDOW,
                 clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.window = window
        self.clock = clock
        self.counters = Counters()
        self.watched: list[Watched] = []

    def watch(self, name: str, thread: Watchable, *, restart: bool = True) -> None:
        """Watch a started thread; one that may not be restarted (``restart=False``) stops the daemon if it dies."""
        self.watched.append(Watched(name, thread, restart))

    def check(self) -> str | None:
        now = self.clock()
        for w in self.watched:
            if w.restart_at is not None:
                if now >= w.restart_at:
                    w.restart_at = None
                    self.counters.incr(f"{w.name}.restarts")
                    log.warning("restarting the %s thread", w.name)
                    w.thread.start()
                continue
            if w.thread.is_alive():
                continue
            error = getattr(w.thread, "last_error", "") or "no error reported"
            if not w.restart:
                return f"the {w.name} thread died ({error})"
            w.deaths.append(now)
            while w.deaths[0] <= now - self.window:
                w.deaths.popleft()
            if len(w.deaths) >= self.limit:
                return f"the {w.name} thread died {len(w.deaths)} times within {self.window:g}s ({error})"
            delay = compute_backoff(len(w.deaths) - 1, first=RESTART_FIRST_DELAY, cap=RESTART_MAX_DELAY)
            w.restart_at = now + delay
            log.error("the %s thread died (%s); restarting it in %.1fs", w.name, error, delay)
        return None
