"""The durable relay: every event a Celery process publishes is also appended to a Redis stream.

Pub/sub forgets whatever is published while no subscriber listens. A stream keeps it until
the daemon's consumer group has acknowledged it (after the database commit), so a daemon
that was down, restarting or killed with -9 loses nothing. Install it with one line in the
Celery app module, for workers and for the processes that send tasks::

    from tasks.relay import install; install(app)

The relay writes the same events celery sends (it wraps the app's EventDispatcher), except
that ``task-sent`` and ``task-received`` carry the complete args/kwargs repr instead of
celery's 1024-character ``argsrepr``, with secrets redacted before they leave the process.

It runs inside the application's own processes, so it must never slow them down or break
them: the publishing thread only puts the encoded event into a bounded per-process buffer,
and a background thread (tasks.relay_writer) writes it to Redis. What the relay could not
deliver is reported to the daemon, which records it in ``receiver_gaps`` (tasks.relay_format):
events dropped while the buffer was full are counted and reported in a ``gap`` entry once Redis
answers again, and a process that vanishes without its closing write (kill -9) stops keeping
its alive key, so the daemon adds the ``gap`` entry for it.
"""
from __future__ import annotations

import atexit
import logging
import os
import secrets
import socket
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

import orjson
from celery import signals
from celery.events.dispatcher import EventDispatcher

from tasks.redact import mask_url, redact_value
from tasks.relay_format import DEFAULT_STREAM, FIELD

__all__ = ["DEFAULT_STREAM", "FIELD", "Relay", "install"]

log = logging.getLogger(__name__)

DEFAULT_MAXLEN = 1_000_000
DEFAULT_BUFFER = 10_000  # events held per process while Redis is slow or away
REDIS_SCHEMES = ("redis", "rediss", "unix")
ALIVE_BEATS = 6  # a producer's alive key outlives this many missed heartbeats
_PENDING_MAX = 10_000  # full args waiting for their event, per process
_ERROR_LOG_INTERVAL = 30.0


def is_redis_url(url: str) -> bool:
    return urlsplit(url).scheme in REDIS_SCHEMES


@dataclass(frozen=True)
class Drops:
    """Events refused since the last report: how many, first and last (epoch seconds)."""

    count: int
    first: float
    last: float


class Relay:
    """Buffers this process's events for its writer thread; one buffer and writer per process (workers fork).

    ``emit`` and ``remember_args`` run in the application's threads: they never wait on Redis
    and never raise. Everything that goes wrong in them is caught, counted and logged.
    """

    def __init__(self, url: str, stream: str = DEFAULT_STREAM, maxlen: int = DEFAULT_MAXLEN, *,
                 buffer_events: int = DEFAULT_BUFFER, batch_size: int = 500, linger: float = 0.02,
                 heartbeat: float = 5.0, socket_timeout: float = 1.0, flush_timeout: float = 2.0):
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.buffer_events = buffer_events
        self.batch_size = batch_size
        self.linger = linger  # seconds the writer waits after the first event, to write more at once
        self.heartbeat = heartbeat
        self.socket_timeout = socket_timeout
        self.flush_timeout = flush_timeout
        self._last_error_log = 0.0
        self._start_process()
        os.register_at_fork(after_in_child=self._start_process)
        atexit.register(self.close)

    def _start_process(self) -> None:
        """Fresh per-process state: at creation and in a forked child, which must not inherit
        the parent's buffer, locks (perhaps held at the fork) or writer thread (not running there)."""
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.producer = f"{self.host}:{self.pid}:{secrets.token_hex(3)}"
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self._queue: deque[bytes] = deque()
        self._full_args: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._writer = None
        self._closed = False
        self.accepted = self.written = self.dropped = self.errors = 0
        self._drops, self._drop_first, self._drop_last = 0, 0.0, 0.0

    # -- the application's side: never waits, never raises --------------------------------------

    def remember_args(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Keep the complete, redacted args of a task until its event is published."""
        try:
            pair = (repr(redact_value(tuple(args or ()))), repr(redact_value(dict(kwargs or {}))))
            with self._lock:
                self._full_args[task_id] = pair
                while len(self._full_args) > _PENDING_MAX:
                    self._full_args.popitem(last=False)
        except Exception as exc:  # noqa: BLE001 - a broken __repr__ in user args must not break sending
            self.failed("cannot keep a task's full args", exc)

    def _with_full_args(self, event: dict) -> dict:
        if event.get("type") not in ("task-sent", "task-received"):
            return event
        with self._lock:
            pair = self._full_args.pop(event.get("uuid"), None)
        if pair is None:
            return event
        return dict(event, args=pair[0], kwargs=pair[1])

    def emit(self, event_or_events: Any) -> None:
        """Hand events to this process's writer; a full buffer drops them and counts the drop."""
        try:
            events = event_or_events if isinstance(event_or_events, list) else [event_or_events]
            payloads = [orjson.dumps(self._with_full_args(e), default=str) for e in events]
            with self._lock:
                room = 0 if self._closed else self.buffer_events - len(self._queue)
                if room < len(payloads):
                    self._dropped(len(payloads) - max(room, 0))
                    payloads = payloads[:max(room, 0)]
                self._queue.extend(payloads)
                self.accepted += len(payloads)
                writer = self._writer
            if writer is None or not payloads and not writer.is_alive():
                self._start_writer()
            if not self.wake.is_set():
                self.wake.set()
        except Exception as exc:  # noqa: BLE001 - the relay runs in the app's process: nothing of it may reach the app
            self.failed("cannot relay an event", exc)

    def _dropped(self, n: int) -> None:
        """Count refused events (the lock is held)."""
        now = time.time()
        if not self._drops:
            self._drop_first = now
        self._drops += n
        self._drop_last = now
        self.dropped += n

    def _start_writer(self) -> None:
        """The writer starts with the first event; again if it ever died (checked when the buffer is full)."""
        from tasks.relay_writer import RelayWriter

        with self._lock:
            if self._closed or (self._writer is not None and self._writer.is_alive()):
                return
            if self._writer is not None:
                log.error("the taskmon relay's writer thread had stopped; starting a new one")
            self._writer = RelayWriter(self)
            self._writer.start()

    def failed(self, what: str, exc: BaseException) -> None:
        """Count an error and log it, at most every 30 s (it may happen on every event)."""
        self.errors += 1
        now = time.monotonic()
        if now - self._last_error_log > _ERROR_LOG_INTERVAL:
            self._last_error_log = now
            log.error("taskmon relay: %s (%s: %s); %d errors so far", what, type(exc).__name__, exc, self.errors)

    # -- the writer's side ------------------------------------------------------------------------

    def take(self, n: int) -> list[bytes]:
        with self._lock:
            queue = self._queue
            return [queue.popleft() for _ in range(min(n, len(queue)))]

    def pending_drops(self) -> Drops | None:
        with self._lock:
            return Drops(self._drops, self._drop_first, self._drop_last) if self._drops else None

    def delivered(self, written: int, drops: Drops | None) -> None:
        """``written`` entries and the report of ``drops`` are in Redis."""
        with self._lock:
            self.written += written
            if drops is not None:
                self._drops -= drops.count
                self._drop_first = drops.last

    def buffered(self) -> int:
        return len(self._queue)

    def stats(self) -> dict[str, Any]:
        """This process's counts (for tests, the bench and an app's own health page)."""
        writer = self._writer
        with self._lock:
            return {"producer": self.producer, "accepted": self.accepted, "written": self.written,
                    "dropped": self.dropped, "errors": self.errors, "buffered": len(self._queue),
                    "unreported_drops": self._drops, "writing": writer is not None and writer.breaker.closed}

    def close(self, timeout: float | None = None) -> bool:
        """Write what is buffered, within ``timeout`` (default ``flush_timeout``), and say that this
        process is done; True if the writer finished. Called at exit and in a worker child's shutdown."""
        with self._lock:
            self._closed = True
            writer = self._writer
        if writer is None:
            return True
        writer.closing.set()
        self.wake.set()
        writer.join(self.flush_timeout if timeout is None else timeout)
        return not writer.is_alive()


def relay_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """relay_url, relay_stream and relay_maxlen from the environment (the daemon's ``TASKMON_*``
    settings), so that ``install(app)`` writes where the daemon reads. A bad value is warned about
    and ignored: the relay must not stop the application from starting."""
    from tasks.settings import ENV_PREFIX, SettingsError, _coerce

    environ = os.environ if environ is None else environ
    out = {}
    for name in ("relay_url", "relay_stream", "relay_maxlen"):
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw:
            try:
                out[name] = _coerce(name, raw)
            except SettingsError as exc:
                log.warning("taskmon relay: ignoring %s%s: %s", ENV_PREFIX, name.upper(), exc)
    return out


def _broker_redis_url(app) -> str | None:
    broker = app.conf.broker_url
    if isinstance(broker, (list, tuple)):
        broker = broker[0] if broker else None
    if not isinstance(broker, str):
        return None
    first = broker.split(";", 1)[0].strip()
    return first if is_redis_url(first) else None


def install(app, url: str | None = None, stream: str | None = None, maxlen: int | None = None,
            **options: Any) -> Relay | None:
    """Relay every event ``app`` publishes to a Redis stream; returns the Relay, or None.

    The Redis is ``url``, else ``TASKMON_RELAY_URL``, else the app's broker when it is Redis.
    Without one (a RabbitMQ broker and no URL) it logs one warning and changes nothing.
    ``options`` go to Relay (buffer_events, heartbeat, flush_timeout, ...).
    """
    env = relay_options()
    target = url or env.get("relay_url") or _broker_redis_url(app)
    if not target or not is_redis_url(target):
        shown = mask_url(str(target or app.conf.broker_url or "the default broker"))
        log.warning("taskmon relay not installed: it needs a Redis URL and %s is not one; pass "
                    "install(app, url='redis://...') or set TASKMON_RELAY_URL (the daemon reads the same)", shown)
        return None
    relay = Relay(target, stream or env.get("relay_stream") or DEFAULT_STREAM,
                  maxlen or env.get("relay_maxlen") or DEFAULT_MAXLEN, **options)

    class RelayDispatcher(EventDispatcher):
        def _publish(self, event, producer, routing_key, *args, **kwargs):
            relay.emit(event)
            return super()._publish(event, producer, routing_key, *args, **kwargs)

    events = app.events
    events.dispatcher_cls = RelayDispatcher
    events.__dict__.pop("Dispatcher", None)  # drop the cached class so the next lookup subclasses ours

    def before_publish(sender=None, body=None, headers=None, **_):
        if headers and isinstance(body, (tuple, list)) and len(body) >= 2 and headers.get("id"):
            relay.remember_args(headers["id"], body[0], body[1])

    def received(sender=None, request=None, **_):
        if request is not None:
            relay.remember_args(request.id, request.args, request.kwargs)

    def child_exits(**_):
        # A prefork child leaves with os._exit: no atexit, so it writes what it holds here.
        relay.close()

    signals.before_task_publish.connect(before_publish, weak=False)
    signals.task_received.connect(received, weak=False)
    signals.worker_process_shutdown.connect(child_exits, weak=False)
    app._taskmon_relay = relay
    return relay
