"""The durable relay: every event a Celery process publishes is also appended to a Redis stream.

Pub/sub forgets whatever is published while no subscriber listens. A stream keeps it until
the daemon's consumer group has acknowledged it (after the database commit), so a daemon
that was down, restarting or killed with -9 loses nothing. Install it with one line in the
Celery app module, for workers and for the processes that send tasks::

    from tasks.relay import install; install(app)

The relay writes the same events celery sends (it wraps the app's EventDispatcher), except
that ``task-sent`` and ``task-received`` carry the complete args/kwargs repr instead of
celery's 1024-character ``argsrepr``, with secrets redacted before they leave the process.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any

import orjson
import redis
from celery import signals
from celery.events.dispatcher import EventDispatcher

from tasks.redact import redact_value

log = logging.getLogger(__name__)

DEFAULT_STREAM = "taskmon:events"
DEFAULT_MAXLEN = 1_000_000
FIELD = b"e"
_PENDING_MAX = 10_000  # full args waiting for their event, per process


class Relay:
    """Appends events to the stream; one Redis client per process (workers fork)."""

    def __init__(self, url: str, stream: str = DEFAULT_STREAM, maxlen: int = DEFAULT_MAXLEN):
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self._client: redis.Redis | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._full_args: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self.errors = 0
        self._last_error_log = 0.0

    def client(self) -> redis.Redis:
        if self._client is None or self._pid != os.getpid():
            self._client = redis.Redis.from_url(self.url, socket_timeout=5, socket_connect_timeout=5)
            self._pid = os.getpid()
        return self._client

    def remember_args(self, task_id: str, args: Any, kwargs: Any) -> None:
        """Keep the complete, redacted args of a task until its event is published."""
        try:
            pair = (repr(redact_value(tuple(args or ()))), repr(redact_value(dict(kwargs or {}))))
        except Exception:  # noqa: BLE001 - a broken __repr__ in user args must not break sending
            return
        with self._lock:
            self._full_args[task_id] = pair
            while len(self._full_args) > _PENDING_MAX:
                self._full_args.popitem(last=False)

    def _with_full_args(self, event: dict) -> dict:
        if event.get("type") not in ("task-sent", "task-received"):
            return event
        with self._lock:
            pair = self._full_args.pop(event.get("uuid"), None)
        if pair is None:
            return event
        return dict(event, args=pair[0], kwargs=pair[1])

    def emit(self, event_or_events: Any) -> None:
        events = event_or_events if isinstance(event_or_events, list) else [event_or_events]
        try:
            payloads = [orjson.dumps(self._with_full_args(dict(e)), default=str) for e in events]
            client = self.client()
            if len(payloads) == 1:
                client.xadd(self.stream, {FIELD: payloads[0]}, maxlen=self.maxlen, approximate=True)
            else:
                with client.pipeline(transaction=False) as pipe:
                    for payload in payloads:
                        pipe.xadd(self.stream, {FIELD: payload}, maxlen=self.maxlen, approximate=True)
                    pipe.execute()
        except (redis.RedisError, OSError, TypeError) as exc:
            self.errors += 1
            now = time.monotonic()
            if now - self._last_error_log > 30:
                self._last_error_log = now
                log.error("taskmon relay cannot write to %s (%s); %d events not relayed so far",
                          self.stream, exc, self.errors)


def install(app, url: str | None = None, stream: str | None = None, maxlen: int | None = None) -> Relay:
    """Relay every event ``app`` publishes to a Redis stream (default: the app's broker)."""
    relay = Relay(url or app.conf.broker_url, stream or DEFAULT_STREAM, maxlen or DEFAULT_MAXLEN)

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

    signals.before_task_publish.connect(before_publish, weak=False)
    signals.task_received.connect(received, weak=False)
    app._taskmon_relay = relay
    return relay
