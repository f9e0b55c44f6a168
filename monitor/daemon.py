"""`taskmon run`: wire sources -> buffer -> writer, keep a heartbeat, stop cleanly."""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor.ingest.buffer import EventBuffer, Gap
from monitor.ingest.counters import merged
from monitor.ingest.memory import tune_allocator
from monitor.ingest.prepare import Preparer
from tasks.redact import mask_url
from tasks.settings import Settings
from monitor.sources import Source
from monitor.ingest.writer import Writer
from storage.health import latest_status, write_status
from storage.runs import row_plan

log = logging.getLogger(__name__)

# A worker is lost after lost_after_heartbeats x its interval (>= 1 s) of silence in the store;
# while the writer is further behind than this, the silence may be the writer's, not the worker's.
FEED_MAX_LAG = 1.0


@dataclass(frozen=True)
class RunOptions:
    sources: tuple[str, ...] = ("auto",)
    enable_events: bool = True
    # Events per transaction at most. The writer takes what has arrived (flush_interval at low
    # rates); under load, bigger batches merge more events per row before any SQL runs.
    batch_size: int = 50_000
    flush_interval: float = 0.2
    buffer_events: int = 200_000
    # Helper processes that turn events into rows while the writer commits (monitor.ingest.prepare);
    # 0: the writer thread does it itself.
    prepare_processes: int = 1
    status_interval: float = 5.0
    log_interval: float = 60.0
    stop_timeout: float = 8.0
    enable_events_interval: float = 10.0  # re-broadcast, for workers started after the daemon


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


def build_sources(names: tuple[str, ...], settings: Settings, buffer: EventBuffer) -> list[Source]:
    sources: list[Source] = []
    for name in names:
        if name == "pubsub":
            from monitor.sources.redis_pubsub import RedisPubSubSource

            sources.append(RedisPubSubSource(buffer, settings.broker_url))
        elif name == "stream":
            from monitor.sources.redis_stream import RedisStreamSource

            sources.append(RedisStreamSource(buffer, settings.relay_url or settings.broker_url,
                                             stream=settings.relay_stream))
        elif name == "amqp":
            from monitor.sources.amqp import AmqpSource

            sources.append(AmqpSource(buffer, settings.broker_url, queue=settings.amqp_queue))
        else:
            raise ValueError(f"unknown source {name!r} (use pubsub, stream, amqp or auto)")
    return sources


def enable_events_loop(broker_url: str, interval: float, stop: threading.Event) -> None:
    """Ask every worker to send task events, now and every ``interval`` s, as Flower does.

    Workers started without -E (or after the daemon) begin sending events at the next broadcast.
    """
    from celery import Celery

    app = Celery("taskmon-control", broker=broker_url, set_as_current=False)
    app.conf.broker_connection_retry_on_startup = False
    app.conf.broker_connection_max_retries = 1
    warned = False
    try:
        while not stop.is_set():
            try:
                app.control.enable_events()
                warned = False
            except Exception as exc:  # noqa: BLE001 - any broker error only means "not now"
                if not warned:
                    log.warning("could not broadcast enable_events (%s); workers need -E", exc)
                    warned = True
            stop.wait(interval)
    finally:
        app.close()


class Daemon:
    def __init__(self, settings: Settings, engine: Engine, options: RunOptions = RunOptions()):
        self.settings = settings
        self.engine = engine
        self.options = options
        tune_allocator()  # before the threads start: see monitor.ingest.memory
        self.buffer = EventBuffer(options.buffer_events)
        self.source_names = resolve_sources(options.sources, settings.broker_url, settings.relay_url)
        self.sources = build_sources(self.source_names, settings, self.buffer)
        self.reconciler = None
        if settings.result_backend:
            from monitor.ingest.reconcile import Reconciler

            self.reconciler = Reconciler(engine, settings)
        self.preparer = Preparer(row_plan(engine.dialect), settings.field_max_bytes, processes=options.prepare_processes)
        self.writer = Writer(engine, self.buffer, field_max_bytes=settings.field_max_bytes,
                             batch_size=options.batch_size, flush_interval=options.flush_interval,
                             on_gap=self.reconciler.submit if self.reconciler else None, preparer=self.preparer)
        self.daemon_id = f"{socket.gethostname()}:{os.getpid()}"
        self.started_at = datetime.now(timezone.utc)
        self.stop_event = threading.Event()
        self.detector = self.scheduler = None  # started in start()
        self.alerter = None  # evaluates the alert rules after each sweep

    def counters(self) -> dict[str, int]:
        parts = [self.writer.counters, self.preparer.counters, *(s.counters for s in self.sources)]
        if self.reconciler is not None:
            parts.append(self.reconciler.counters)
        if self.detector is not None:
            parts.append(self.detector.counters)
        if self.alerter is not None:
            parts.append(self.alerter.counters)
        out = merged(*parts)
        out["buffered"] = len(self.buffer)
        return out

    def start(self) -> None:
        self._record_downtime()
        self.writer.start()
        if self.reconciler is not None:
            self.reconciler.start()
        for source in self.sources:
            source.start()
        if self.options.enable_events:
            threading.Thread(target=enable_events_loop, name="taskmon-enable-events", daemon=True,
                             args=(self.settings.broker_url, self.options.enable_events_interval, self.stop_event)).start()
        self._start_detectors()
        log.info("taskmon daemon %s: sources %s, database %s", self.daemon_id, ",".join(self.source_names),
                 self.engine.url.render_as_string(hide_password=True))

    def _start_detectors(self) -> None:
        """Detector sweeps every detect_interval seconds, each followed by the alert rules' evaluation,
        in APScheduler's thread with their own connections."""
        if not self.settings.detect_interval:
            return
        from apscheduler.schedulers.background import BackgroundScheduler

        from monitor.alerts.runner import AlertRunner
        from monitor.detectors.sweep import Sweeper

        self.detector = Sweeper(self.engine, self.settings, feed_ok=self._feed_ok)
        alerter = AlertRunner(self.engine, self.settings)
        if alerter.enabled:
            self.alerter = alerter
        else:
            alerter.close()
        self.scheduler = BackgroundScheduler(timezone=timezone.utc)
        self.scheduler.add_job(self._detect_and_alert, "interval", seconds=self.settings.detect_interval,
                               id="detect", max_instances=1, coalesce=True)
        self.scheduler.start()

    def _detect_and_alert(self) -> None:
        """One sweep, then the alert rules on what it found; each logs and counts its own failures."""
        result = self.detector.run()
        if self.alerter is not None:
            self.alerter.run(result)

    def _feed_ok(self) -> bool:
        """Whether stored heartbeats are current: every source connected and the writer keeping up
        (nothing received more than FEED_MAX_LAG seconds ago is still uncommitted)."""
        return (all(source.connected.is_set() for source in self.sources) and self.writer.healthy
                and len(self.buffer) < self.options.batch_size and self.writer.lag() < FEED_MAX_LAG)

    def _record_downtime(self) -> None:
        """A daemon that starts after another one stopped (or died) missed what came between."""
        try:
            with self.engine.connect() as conn:
                last = latest_status(conn)
        except SQLAlchemyError as exc:
            log.warning("cannot read the previous daemon status: %s", exc)
            return
        if last is None:
            return
        ended = last["stopped_at"] or last["heartbeat_at"]
        if self.started_at - ended > timedelta(seconds=1):
            how = "stopped" if last["stopped_at"] else "last heartbeat"
            self.buffer.put_control(Gap("daemon", "daemon_down", ended, self.started_at, None,
                                        f"previous daemon {last['daemon_id']} {how} at {ended.isoformat()}"))

    def heartbeat(self, stopped: bool = False) -> bool:
        now = datetime.now(timezone.utc)
        try:
            with self.engine.begin() as conn:
                write_status(conn, daemon_id=self.daemon_id, hostname=socket.gethostname(), pid=os.getpid(),
                             sources=",".join(self.source_names), started_at=self.started_at, heartbeat_at=now,
                             counters=self.counters(), stopped_at=now if stopped else None)
            return True
        except SQLAlchemyError as exc:
            log.warning("cannot write the daemon heartbeat: %s", str(getattr(exc, "orig", exc)).splitlines()[0])
            return False

    def serve(self) -> int:
        """Run until SIGTERM/SIGINT (or stop()); flush and return the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())
        self.start()
        last_log = time.monotonic()
        last_counts = self.counters()
        while not self.stop_event.wait(self.options.status_interval):
            self.heartbeat()
            if time.monotonic() - last_log >= self.options.log_interval:
                counts = self.counters()
                elapsed = time.monotonic() - last_log
                self._log_rates(last_counts, counts, elapsed)
                last_counts, last_log = counts, time.monotonic()
            if not self.writer.is_alive():
                log.error("the writer thread died; stopping")
                break
        return self.shutdown()

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
        deadline = time.monotonic() + self.options.stop_timeout
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        if self.alerter is not None:
            self.alerter.close()
        for source in self.sources:
            source.stop()
        for source in self.sources:
            source.join(max(deadline - time.monotonic(), 0.1) / 2)
        self.writer.stop(deadline)
        self.writer.join(max(deadline - time.monotonic(), 0.1))
        self.preparer.close()
        if self.reconciler is not None:
            self.reconciler.stop()
        for source in self.sources:
            source.after_flush()
        self.heartbeat(stopped=True)
        counts = self.counters()
        log.warning("stopped: %d events received, %d rows written, %d lost on shutdown",
                    counts.get("events_received", 0), counts.get("rows_written", 0),
                    counts.get("events_lost_on_shutdown", 0))
        return 0
