"""Celery events from RabbitMQ through a durable, named queue bound to the ``celeryev`` exchange.

Unlike the auto-delete queue of celery's EventReceiver (and Flower), the queue outlives the
daemon, so events published while it is down wait for it. Messages are acknowledged only
after the writer committed them; kombu channels are not thread-safe, so the writer hands
the acknowledgement back and this reader thread sends it.
"""
from __future__ import annotations

import logging
import queue as queue_mod
import socket

from kombu import Connection, Consumer, Exchange, Queue

from monitor.ingest.events import Malformed
from tasks.redact import mask_url
from monitor.sources import Source, decode_body

log = logging.getLogger(__name__)

# As celery.events.event.event_exchange declares it; a different declaration is refused by RabbitMQ.
EVENT_EXCHANGE = Exchange("celeryev", type="topic")


class AmqpSource(Source):
    name_prefix = "amqp"
    durable = True
    gap_reason = "amqp_disconnect"

    def __init__(self, buffer, broker_url: str, *, queue: str = "taskmon.events", prefetch: int = 5000,
                 max_length: int | None = None, **kwargs):
        super().__init__(buffer, **kwargs)
        self.broker_url = broker_url
        self.queue = Queue(queue, EVENT_EXCHANGE, routing_key="#", durable=True, auto_delete=False,
                           queue_arguments={"x-max-length": max_length} if max_length else None)
        self.prefetch = prefetch
        # (channel number, delivery tag): tags count per channel, so one of an earlier channel must never
        # be sent on the next (it would acknowledge that channel's messages before they are committed).
        self._acks: queue_mod.SimpleQueue[tuple[int, int]] = queue_mod.SimpleQueue()
        self._channel_number = 0
        probe = Connection(broker_url)  # no I/O: only to learn which errors the transport raises
        self.connection_errors = (OSError, *probe.connection_errors, *probe.channel_errors)
        self._conn: Connection | None = None  # owned by the reader thread, then by after_flush
        self._channel = None
        self._consumer: Consumer | None = None
        self._draining = False
        self._events: list = []
        self._last_tag = 0

    def connect(self) -> None:
        self._draining = False
        self._channel_number += 1
        self._conn = Connection(self.broker_url, connect_timeout=5, heartbeat=30)
        self._conn.ensure_connection(max_retries=1)
        self._channel = self._conn.channel()
        self._channel.basic_qos(0, self.prefetch, False)
        self._consumer = Consumer(self._channel, queues=[self.queue], on_message=self._on_message, no_ack=False)
        self._consumer.consume()
        log.info("consuming events from queue %s on %s", self.queue.name, mask_url(self.broker_url))

    def consume(self) -> None:
        self._loop(self._conn)
        self._consumer.cancel()
        self._draining = True  # stopping: the channel stays open for the last acknowledgements

    def close(self) -> None:
        if self._draining:
            return  # after_flush acknowledges what the writer committed, then closes
        # Tags of a closed channel are void: RabbitMQ redelivers those messages, read ones included.
        self._channel = self._consumer = None
        self._events, self._last_tag = [], 0
        self._drop_acks()
        if self._conn is not None:
            try:
                self._conn.release()
            except self.connection_errors as exc:
                log.debug("closing the RabbitMQ connection: %s", exc)
            self._conn = None

    def unreachable(self, exc: BaseException) -> str:
        return (f"cannot consume from RabbitMQ at {mask_url(self.broker_url)} ({exc}); retrying "
                "(unacknowledged events are redelivered)")

    def _loop(self, conn: Connection) -> None:
        while not self.stopping.is_set():
            try:
                conn.drain_events(timeout=0.2)
                # Drain everything already on the socket before handing the batch over.
                while len(self._events) < self.prefetch:
                    conn.drain_events(timeout=0)
            except (socket.timeout, TimeoutError):
                pass
            self._flush_events()
            self._send_acks()
            conn.heartbeat_check()

    def _on_message(self, message) -> None:
        self.counters.incr("messages_received")
        self._last_tag = message.delivery_tag
        body = message.body
        if len(body) > self.max_message_bytes:
            self.malformed("oversize")
            return
        if message.content_type not in (None, "", "application/json"):
            self.malformed("unsupported_content_type")
            return
        try:
            self._events.extend(decode_body(body if isinstance(body, bytes) else body.encode()))
        except Malformed as exc:
            self.malformed(exc.reason)

    def _flush_events(self) -> None:
        if not self._last_tag:
            return
        tag, events = (self._channel_number, self._last_tag), self._events
        self._events, self._last_tag = [], 0
        ack = lambda: self._acks.put(tag)  # noqa: E731 - sent by this thread, see _send_acks
        if events:
            self.deliver(events, ack=ack)
        else:
            ack()  # only malformed messages: acknowledge them, they were counted

    def _send_acks(self) -> None:
        last = 0
        while True:
            try:
                channel, tag = self._acks.get_nowait()
            except queue_mod.Empty:
                break
            if channel == self._channel_number:
                last = max(last, tag)
        if last and self._channel is not None:
            self._channel.basic_ack(last, multiple=True)
            self.counters.incr("amqp.acks")

    def _drop_acks(self) -> None:
        while True:
            try:
                self._acks.get_nowait()
            except queue_mod.Empty:
                return

    def after_flush(self) -> None:
        """The reader has stopped and the writer flushed: send the last acknowledgements, close."""
        if self._conn is None:
            return
        try:
            self._send_acks()
        except (OSError, *self._conn.connection_errors, *self._conn.channel_errors) as exc:
            log.warning("could not acknowledge the last events (%s); RabbitMQ will redeliver them", exc)
        finally:
            self._conn.release()
            self._conn = self._channel = None
