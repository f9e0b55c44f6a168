"""`taskmon run`: wire sources -> buffer -> writer, supervise every thread, keep a heartbeat, stop cleanly."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor.ingest.buffer import EventBuffer, Gap
from monitor.ingest.counters import merged
from monitor.ingest.memory import tune_allocator
from monitor.ingest.prepare import Preparer
from monitor.ingest.writer import Writer
from monitor.sources import Source
from monitor.supervisor import Periodic, Service, Supervisor
from tasks.redact import mask_url
from tasks.settings import Settings
from storage.errors import first_line
from monitor.cluster import Leadership, cluster_downtime, cluster_locks
from storage.cluster import all_status
from storage.health import write_status
from storage.runs import row_plan

log = logging.getLogger(__name__)

# A worker is lost after lost_after_heartbeats x its interval (>= 1 s) of silence in the store;
# while the writer is further behind than this, the silence may be the writer's, not the worker's.
FEED_MAX_LAG = 1.0
# How often the watchdog looks at every thread (and samples whether the feed is live).
SUPERVISE_INTERVAL = 0.5


def resolve_sources(names: tuple[str, ...], broker_url: str, relay_url: str = "") -> tuple[str, ...]:
    """'auto': pub/sub plus the durable stream on Redis, the durable queue on RabbitMQ (plus the
    stream when the relay writes to a Redis of its own, ``relay_url``)."""
    scheme = broker_url.split("://", 1)[0].split("+", 1)[0]
    redis_broker = scheme in {"redis", "rediss"}
    out: list[str] = []
    for name in names:
        if name == "auto":
            out.extend(["pubsub", "stream"] if redis_broker else ["amqp", "stream"] if relay_url else ["amqp"])
        else:
            out.append(name)
    for name in out:
        if name == "pubsub" and not redis_broker:
            raise ValueError(f"source 'pubsub' needs a Redis broker, not {mask_url(broker_url)}")
        if name == "stream" and not (redis_broker or relay_url):
            raise ValueError(f"source 'stream' needs a Redis broker or relay_url, not {mask_url(broker_url)}")
        if name == "amqp" and scheme not in {"amqp", "amqps", "pyamqp"}:
            raise ValueError(f"source 'amqp' needs a RabbitMQ broker, not {mask_url(broker_url)}")
    return tuple(dict.fromkeys(out))


def _pubsub(settings: Settings, buffer: EventBuffer, name: str) -> Source:
    from monitor.sources.redis_pubsub import RedisPubSubSource

    return RedisPubSubSource(buffer, settings.broker_url)


def _stream(settings: Settings, buffer: EventBuffer, name: str) -> Source:
    from monitor.sources.redis_stream import RedisStreamSource

    # One consumer per daemon in the group: a restarted daemon (same name) reads its own pending entries.
    return RedisStreamSource(buffer, settings.relay_url or settings.broker_url, stream=settings.relay_stream,
                             consumer=f"taskmon-{name}")


def _amqp(settings: Settings, buffer: EventBuffer, name: str) -> Source:
    from monitor.sources.amqp import AmqpSource

    return AmqpSource(buffer, settings.broker_url, queue=settings.amqp_queue)


# Imported when chosen: kombu, hiredis and the like load only for the sources a daemon reads.
SOURCES: dict[str, Callable[[Settings, EventBuffer, str], Source]] = {"pubsub": _pubsub, "stream": _stream, "amqp": _amqp}


def build_sources(names: tuple[str, ...], settings: Settings, buffer: EventBuffer,
                  daemon_id: str = "") -> list[Source]:
    for name in names:
        if name not in SOURCES:
            raise ValueError(f"unknown source {name!r} (use pubsub, stream, amqp or auto)")
    return [SOURCES[name](settings, buffer, daemon_id or socket.gethostname()) for name in names]


class EnableEvents:
    """Asks every worker to send task events, as Flower does: workers started without -E (or after
    the daemon) begin at the next broadcast."""

    def __init__(self, broker_url: str):
        from tasks.client import client_app

        self.app = client_app(broker_url, name="taskmon-control")
        self.warned = False

    def __call__(self) -> None:
        try:
            self.app.control.enable_events()
            self.warned = False
        except Exception as exc:  # noqa: BLE001 - any broker error only means "not now"
            if not self.warned:
                log.warning("could not broadcast enable_events (%s); workers need -E", exc)
                self.warned = True

    def close(self) -> None:
        self.app.close()


class Daemon:
    """Sources -> buffer -> writer, the detector and alert loop, heartbeats; every thread supervised."""

    def __init__(self, settings: Settings, engine: Engine):
        if settings.status_interval >= settings.heartbeat_stale_seconds:
            raise ValueError(f"status_interval: must be less than heartbeat_stale_seconds "
                             f"({settings.heartbeat_stale_seconds}), or every heartbeat is stale; got {settings.status_interval:g}")
        self.settings = settings
        self.engine = engine
        self.source_names = resolve_sources(settings.event_sources, settings.broker_url, settings.relay_url)
        self._locks = cluster_locks(settings, engine)  # ClusterError: this daemon may not run
        self.daemon_id = settings.daemon_name or self._locks.name
        tune_allocator()  # before the threads start: see monitor.ingest.memory
        self.buffer = EventBuffer(settings.buffer_events)
        try:
            self.sources = build_sources(self.source_names, settings, self.buffer, self.daemon_id)
        except ValueError:
            self._locks.release()
            raise
        self.leadership = Leadership(engine, on_change=self._role_changed)
        self.reconciler = None
        if settings.result_backend:
            from monitor.ingest.reconcile import Reconciler

            # In every daemon, working in the leader only: a follower's gaps wait in receiver_gaps for it.
            self.reconciler = Reconciler(engine, settings, daemon_id=self.daemon_id,
                                         is_leader=self.leadership.is_leader)
        self.preparer = Preparer(row_plan(engine.dialect), settings.field_max_bytes, processes=settings.prepare_processes)
        self.writer = Writer(engine, self.buffer, field_max_bytes=settings.field_max_bytes,
                             batch_size=settings.batch_size, flush_interval=settings.flush_interval,
                             on_gap=self._reconcile if self.reconciler else None, preparer=self.preparer,
                             daemon_id=self.daemon_id)
        self.started_at = datetime.now(timezone.utc)
        self.stop_event = threading.Event()
        self.exit_reason: str | None = None  # why the daemon stops itself; None: asked to stop
        self.supervisor = Supervisor()
        self.watchdog = Periodic("supervisor", SUPERVISE_INTERVAL, self._supervise)
        self.heartbeats = Periodic("heartbeat", settings.status_interval, self._beat, at_start=True)
        self._downtime_done = False
        self._status_at_start: list[dict] | None = None
        self._rate_sample, self._rate = (time.monotonic(), 0), 0
        self.broadcaster: EnableEvents | None = None
        self.broadcasts: Periodic | None = None
        self.detector = self.detect_loop = None  # started in start() when detect_interval is set
        self.queue_sampler = None  # started in start() when queue_sample_interval is set
        self.alerter = None  # evaluates the alert rules after each sweep
        self._feed_lock = threading.Lock()
        self._caught_up_since: datetime | None = None
        self._last_log: tuple[float, dict] = (time.monotonic(), {})  # when the rates were last logged, and the counts

    def counters(self) -> dict[str, int]:
        parts = [self.writer.counters, self.preparer.counters, self.supervisor.counters, self.leadership.counters,
                 *(s.counters for s in self.sources), *(s.counters for s in self._services())]
        if self.detector is not None:
            parts.append(self.detector.counters)
        if self.alerter is not None:
            parts.append(self.alerter.counters)
        out = merged(*parts)
        out["buffered"] = len(self.buffer)
        return out

    def _services(self) -> list[Service]:
        return [s for s in (self.reconciler, self.broadcasts, self.detect_loop, self.queue_sampler,
                            self.heartbeats, self.watchdog) if s is not None]

    def start(self) -> None:
        self._status_at_start = self._read_status()  # before this daemon's first heartbeat replaces its old row
        self.writer.start()
        self.supervisor.watch("writer", self.writer, restart=False)  # it holds uncommitted batches
        for source in self.sources:
            source.start()
            self.supervisor.watch(source.name, source)
        if self.reconciler is not None:
            self.reconciler.start()
            self.supervisor.watch("reconcile", self.reconciler)
        if self.settings.enable_events:
            self.broadcaster = EnableEvents(self.settings.broker_url)
            self.broadcasts = Periodic("enable-events", self.settings.enable_events_interval, self.broadcaster,
                                       at_start=True)
            self.broadcasts.start()
            self.supervisor.watch("enable-events", self.broadcasts)
        self._start_detectors()
        self._start_queue_sampler()
        self.leadership.start()
        self.supervisor.watch("leader", self.leadership)
        self._last_log = (time.monotonic(), self.counters())
        self.heartbeats.start()
        self.supervisor.watch("heartbeat", self.heartbeats)
        self.watchdog.start()
        self._start_metrics()
        log.info("taskmon daemon %s: sources %s, database %s", self.daemon_id, ",".join(self.source_names),
                 self.engine.url.render_as_string(hide_password=True))

    def _start_metrics(self) -> None:
        """Prometheus metrics on a port of the daemon's own when metrics_port is set."""
        self.metrics_server = None
        if self.settings.metrics_port:
            from monitor.metrics import start_metrics_server

            self.metrics_server, _ = start_metrics_server(self.engine, self.settings, self.live_metrics)

    def live_metrics(self) -> dict:
        """The daemon's own counters for its metrics port: they start at 0 with each process."""
        return {"daemon_id": self.daemon_id, "counters": self.counters(), "writer_lag": round(self.writer.lag(), 3),
                "per_source": {s.name: s.counters.get("events_received") for s in self.sources},
                "leader": self.leadership.is_leader()}

    def _start_detectors(self) -> None:
        """Detector sweeps every detect_interval seconds, each followed by the alert rules' evaluation,
        in a thread of their own with their own connections."""
        if not self.settings.detect_interval:
            return
        from monitor.alerts.runner import AlertRunner
        from monitor.detectors.sweep import Sweeper

        self.detector = Sweeper(self.engine, self.settings, feed_since=self.feed_since)
        alerter = AlertRunner(self.engine, self.settings)
        if alerter.enabled:
            self.alerter = alerter
        else:
            alerter.close()
        self.detect_loop = Periodic("detect", self.settings.detect_interval, self._detect_and_alert)
        self.detect_loop.start()
        self.supervisor.watch("detect", self.detect_loop)

    def _start_queue_sampler(self) -> None:
        """Queue depths every queue_sample_interval seconds, stored by the leader only (monitor.queue_sampler)."""
        if self.settings.queue_sample_interval:
            from monitor.queue_sampler import QueueSampler

            self.queue_sampler = QueueSampler(self.engine, self.settings,
                                              self.settings.queue_sample_interval, self.leadership.is_leader)
            self.queue_sampler.start()
            self.supervisor.watch("queue-depths", self.queue_sampler)

    def _detect_and_alert(self) -> None:
        """One sweep, then the alert rules on what it found; each logs and counts its own failures.
        Only the cluster's leader sweeps: the others' verdicts and e-mails would be repeats."""
        if not self.leadership.is_leader():
            return
        result = self.detector.run()
        if self.alerter is not None:
            self.alerter.run(result)

    def _reconcile(self, gap_id: int, gap: Gap) -> None:
        """A gap was recorded: the leader asks the result backend about tasks it may have left unfinished
        (a durable source's gap, events_lost 0, needs no answer and is recorded as reconciled)."""
        if gap.events_lost != 0:
            self.reconciler.nudge()

    def feed_since(self) -> datetime | None:
        """Since when every source has been connected and the writer caught up; None while not.

        Only then are the stored heartbeats current, and a worker's silence means anything.
        While the writer is further behind than FEED_MAX_LAG, the silence may be the writer's.
        """
        now = datetime.now(timezone.utc)
        with self._feed_lock:
            live = (all(s.connected.is_set() and s.is_alive() for s in self.sources)
                    and self.writer.is_alive() and self.writer.healthy
                    and len(self.buffer) < self.settings.batch_size and self.writer.lag() < FEED_MAX_LAG)
            if not live:
                self._caught_up_since = None
                return None
            if self._caught_up_since is None:
                self._caught_up_since = now
            return max(self._caught_up_since, *(s.since for s in self.sources))

    def _supervise(self) -> None:
        """The watchdog's job: restart what died, stop the daemon when something cannot be kept running."""
        self.feed_since()  # sampled often, so that a short stall is not missed between sweeps
        reason = self.supervisor.check()
        if reason is not None and self.exit_reason is None:
            self.exit_reason = reason
            log.error("%s; stopping (exit 1) so that the service manager starts taskmon again", reason)
            self.stop_event.set()

    def _role_changed(self, leading: bool) -> None:
        """The leader thread's news; the first time this daemon leads, it accounts for the downtime before it."""
        self.heartbeat()  # `taskmon daemons` and check show the new role at once
        if leading and not self._downtime_done:
            self._downtime_done = self._record_downtime()
        if leading and self.reconciler is not None:
            self.reconciler.nudge()  # gaps the previous leader left, or followers recorded meanwhile

    def _read_status(self) -> list[dict] | None:
        try:
            with self.engine.connect() as conn:
                return all_status(conn)
        except SQLAlchemyError as exc:
            log.warning("cannot read the daemons' status: %s", first_line(exc))
            return None

    def _record_downtime(self) -> bool:
        """A gap from when the last daemon stopped (or died) to this one's start, if no daemon was alive between.
        Returns False when the status rows could not be read (tried again at the next election)."""
        now = self._read_status()
        if now is None or self._status_at_start is None:
            return False
        rows = {row["daemon_id"]: row for row in self._status_at_start}
        rows.update((row["daemon_id"], row) for row in now if row["daemon_id"] != self.daemon_id)
        gap = cluster_downtime(list(rows.values()), self.started_at, self.settings.status_interval + 1)
        if gap is not None:
            self.buffer.put_control(gap)
        return True

    def _with_rate(self) -> dict[str, int]:
        """The counters, and events received per second since the previous heartbeat (`taskmon daemons`)."""
        counters = self.counters()
        at, received = time.monotonic(), counters.get("events_received", 0)
        before_at, before = self._rate_sample
        if at - before_at > 0.05:
            self._rate = round((received - before) / (at - before_at))
            self._rate_sample = (at, received)
        counters["events_per_second"] = self._rate
        return counters

    def heartbeat(self, stopped: bool = False) -> bool:
        now = datetime.now(timezone.utc)
        try:
            with self.engine.begin() as conn:
                write_status(conn, daemon_id=self.daemon_id, hostname=socket.gethostname(), pid=os.getpid(),
                             sources=",".join(self.source_names), started_at=self.started_at, heartbeat_at=now,
                             counters=self._with_rate(), stopped_at=now if stopped else None,
                             source_states={s.name: s.state() for s in self.sources},
                             writer_lag=round(self.writer.lag(), 3), feed_since=None if stopped else self.feed_since(),
                             stop_reason=self.exit_reason if stopped else None,
                             role=None if stopped else self.leadership.role)
            return True
        except SQLAlchemyError as exc:
            log.warning("cannot write the daemon heartbeat: %s", first_line(exc))
            return False

    def _beat(self) -> None:
        """The heartbeat thread's job: the sources' keepalives, the status row, and the rates in the log
        every log_interval."""
        # Keepalives first: a slow database (a heartbeat waiting for a connection, often while the
        # writer is behind and the reader waits for buffer space) must not make this daemon's stream
        # consumer look silent, or another daemon claims the entries it is still working on.
        for source in self.sources:
            source.keepalive()
        self.heartbeat()
        since, before = self._last_log
        elapsed = time.monotonic() - since
        if elapsed >= self.settings.log_interval:
            after = self.counters()
            self._log_rates(before, after, elapsed)
            self._last_log = (time.monotonic(), after)

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT (or stop()), or until a thread cannot be kept running; flush and
        return the exit code: 0 when asked to stop, 1 when the daemon stopped itself."""
        previous = {sig: signal.signal(sig, lambda *_: self.stop_event.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self.stop_event.wait(1.0):
                if not self.watchdog.is_alive():
                    self.exit_reason = f"the supervisor thread died ({self.watchdog.last_error})"
                    log.error("%s; stopping", self.exit_reason)
                    break
            return self.shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _log_rates(self, before: dict, after: dict, elapsed: float) -> None:
        def rate(key: str) -> float:
            return (after.get(key, 0) - before.get(key, 0)) / elapsed

        malformed = sum(v for k, v in after.items() if k.startswith("malformed."))
        log.warning("events %.0f/s, rows %.0f/s, buffered %d, malformed %d, dropped %d, gaps %d",
                    rate("events_received"), rate("rows_written"), after.get("buffered", 0), malformed,
                    after.get("events_dropped", 0), after.get("gaps", 0))

    def stop(self) -> None:
        self.stop_event.set()

    def shutdown(self) -> int:
        self.stop_event.set()
        if getattr(self, "metrics_server", None) is not None:
            self.metrics_server.shutdown()
        deadline = time.monotonic() + self.settings.stop_timeout

        def remaining() -> float:
            return max(deadline - time.monotonic(), 0.1)

        for loop in (self.watchdog, self.heartbeats):  # nothing is restarted from here on
            loop.stop()
            loop.join(remaining())
        self.leadership.stop()  # a follower may take over while this one flushes
        self.leadership.join(remaining())
        self.leadership.close()
        if self.detect_loop is not None:
            self.detect_loop.stop()
            self.detect_loop.join(remaining())  # a sweep under way finishes
        if self.alerter is not None:
            self.alerter.close()
        if self.broadcasts is not None:
            self.broadcasts.stop()
        if self.queue_sampler is not None:
            self.queue_sampler.stop()
        for source in self.sources:
            source.stop()
        for source in self.sources:
            source.join(remaining() / 2)
        self.writer.stop(deadline)
        self.writer.join(remaining())
        self.preparer.close()
        if self.reconciler is not None:
            self.reconciler.stop()
        for source in self.sources:
            source.after_flush()
        if self.broadcasts is not None:
            self.broadcasts.join(remaining())
            self.broadcaster.close()
        self.heartbeat(stopped=True)
        self._locks.release()
        counts = self.counters()
        log.warning("stopped: %d events received, %d rows written, %d lost on shutdown",
                    counts.get("events_received", 0), counts.get("rows_written", 0),
                    counts.get("events_lost_on_shutdown", 0))
        return 0 if self.exit_reason is None else 1
