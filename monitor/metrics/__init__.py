"""Prometheus metrics: celery-exporter's names, types and labels, and taskmon's own.

The values follow what taskmon stored, never a scan of task_runs: the celery_task_* counters and
histograms are run_totals (kept by triggers on task_runs, so a run is counted once however its
events arrived), the worker gauges the workers table, queue lengths the broker. taskmon_* come
from the daemon's counters: live on the daemon's own metrics port, from daemon_status (one
series per running daemon, labelled ``daemon``) on `taskmon serve`'s /metrics. Which daemon leads
is ``taskmon_daemon_leader`` (1/0 per daemon) and ``taskmon_cluster_has_leader``, as etcd's
``etcd_server_is_leader`` and ``etcd_server_has_leader``.

``render(...)`` gives the exposition as (bytes, content type); ``asgi_app(...)`` an ASGI app for
a web server to mount at /metrics; ``start_metrics_server(...)`` the daemon's own port.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from monitor.broker.queues import queue_depths
from monitor.health import cluster_leader
from storage.errors import first_line
from storage.metrics import alerts_by_status, open_dead_letters, read_totals, read_workers, running_daemons
from storage.rollups import BOUNDS, TOTALS_COUNTS
from tasks.settings import Settings

log = logging.getLogger(__name__)

# prometheus_client's Histogram.DEFAULT_BUCKETS, which celery-exporter uses; the stored buckets
# (storage.rollups.BOUNDS) start with exactly these bounds.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
assert BOUNDS[:len(DEFAULT_BUCKETS)] == DEFAULT_BUCKETS
OTHER = "other"
INSPECT_TIMEOUT = 1.0

# (metric name without _total, run_totals column, help) as celery-exporter words them.
TASK_COUNTERS = (
    ("celery_task_sent", "sent", "Sent when a task message is published."),
    ("celery_task_received", "received", "Sent when the worker receives a task."),
    ("celery_task_started", "started", "Sent just before the worker executes the task."),
    ("celery_task_succeeded", "succeeded", "Sent if the task executed successfully."),
    ("celery_task_rejected", "rejected",
     "The task was rejected by the worker, possibly to be re-queued or moved to a dead letter queue."),
    ("celery_task_revoked", "revoked", "Sent if the task has been revoked."),
    ("celery_task_retried", "retried", "Sent if the task failed, but will be retried in the future."),
)
TASK_LABELS = ["name", "hostname", "queue_name"]
FINDING_KINDS = ("timeout", "lost", "stuck", "workers_lost", "dead_letters")

Live = Callable[[], dict[str, Any]]


def _capped(values: dict[str, int], limit: int) -> tuple[set[str], int]:
    """The ``limit`` values with the most runs (ties by name), and how many were left out."""
    ranked = sorted(values, key=lambda v: (-values[v], v))
    return set(ranked[:limit]), max(len(ranked) - limit, 0)


class TaskmonCollector:
    """A prometheus_client collector that reads taskmon's store (and the broker) on every scrape."""

    def __init__(self, engine: Engine, settings: Settings, live: Live | None = None):
        self.engine = engine
        self.settings = settings
        self.live = live  # the daemon's own counters; None: read daemon_status

    def collect(self) -> Iterable:
        errors: dict[str, int] = defaultdict(int)
        try:
            with self.engine.connect() as conn:
                totals = read_totals(conn)
                workers = read_workers(conn)
                dead_open = open_dead_letters(conn)
                deliveries = alerts_by_status(conn)
                daemons = running_daemons(conn)
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the store: %s", first_line(exc))
            errors["database"] += 1
            totals, workers, dead_open, deliveries, daemons = [], [], None, {}, []
        read = not errors
        folded: dict[str, int] = {}
        yield from self._task_families(totals, folded)
        yield from self._worker_families(workers)
        yield from self._queue_families({t["queue"] for t in totals if t["queue"]}, errors)
        yield from self._taskmon_families(daemons, dead_open, deliveries, read)
        capped = GaugeMetricFamily("taskmon_metrics_label_values_folded",
                                   f"Distinct label values beyond metrics_label_limit, reported as \"{OTHER}\".",
                                   labels=["label"])
        for label in ("name", "exception"):
            capped.add_metric([label], folded.get(label, 0))
        yield capped
        scrape = GaugeMetricFamily("taskmon_metrics_scrape_errors", "Parts of this scrape that could not be read.",
                                   labels=["part"])
        for part in ("database", "broker"):
            scrape.add_metric([part], errors.get(part, 0))
        yield scrape

    # -- celery-exporter's task metrics -------------------------------------------------------

    def _task_families(self, totals: list[dict], folded: dict[str, int]) -> Iterable:
        # A run counted under no worker yet (sent, not received) moves to its worker's labels when
        # it is received: the label set it left holds zeros, and its series ends.
        totals = [t for t in totals if any(t[c] for c in TOTALS_COUNTS)]
        limit = self.settings.metrics_label_limit
        by_name: dict[str, int] = defaultdict(int)
        by_exception: dict[str, int] = defaultdict(int)
        for t in totals:
            by_name[t["name"]] += max(t[c] for c in TOTALS_COUNTS)
            if t["failed"]:
                by_exception[t["exception"]] += t["failed"]
        names, folded["name"] = _capped(by_name, limit)
        exceptions, folded["exception"] = _capped(by_exception, limit)

        counts: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        failed: dict[tuple, float] = defaultdict(float)
        runtime: dict[tuple, list] = {}
        wait: dict[tuple, list] = {}
        for t in totals:
            key = (t["name"] if t["name"] in names else OTHER, t["hostname"], t["queue"])
            for column in TOTALS_COUNTS:
                counts[key][column] += t[column]
            exception = t["exception"] if t["exception"] in exceptions else OTHER
            failed[key + (exception,)] += t["failed"]
            for store, prefix in ((runtime, "rt"), (wait, "qw")):
                acc = store.setdefault(key, [0] * (len(BOUNDS) + 1) + [0, 0.0])
                for i in range(len(BOUNDS) + 1):
                    acc[i] += t[f"{prefix}_{i:02d}"]
                acc[-2] += t["runtime_n" if prefix == "rt" else "wait_n"]
                acc[-1] += t["runtime_sum" if prefix == "rt" else "wait_sum"]

        for metric, column, doc in TASK_COUNTERS:
            family = CounterMetricFamily(metric, doc, labels=TASK_LABELS)
            for key, values in sorted(counts.items()):
                family.add_metric(list(key), values[column])
            yield family
        family = CounterMetricFamily("celery_task_failed", "Sent if the execution of the task failed.",
                                     labels=["name", "hostname", "exception", "queue_name"])
        by_key: dict[tuple, dict[str, float]] = defaultdict(dict)
        for (name, hostname, queue, exception), n in failed.items():
            if n:
                by_key[(name, hostname, queue)][exception] = n
        for name, hostname, queue in sorted(counts):
            # As celery-exporter: a label set without failures shows a 0 with an empty exception.
            for exception, n in sorted(by_key.get((name, hostname, queue), {"": 0}).items()):
                family.add_metric([name, hostname, exception, queue], n)
        yield family
        yield self._histogram("celery_task_runtime", "Histogram of task runtime measurements.", runtime)
        yield self._histogram("celery_task_queue_wait_time",
                              "Histogram of task queue wait time measurements.", wait)

    @staticmethod
    def _histogram(metric: str, doc: str, data: dict[tuple, list]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(metric, doc, labels=TASK_LABELS)
        for key, acc in sorted(data.items()):
            cumulative, buckets = 0, []
            for i, bound in enumerate(DEFAULT_BUCKETS):
                cumulative += acc[i]
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", acc[-2]))
            family.add_metric(list(key), buckets, acc[-1])
        return family

    # -- workers and queues -------------------------------------------------------------------

    @staticmethod
    def _worker_families(workers: list[dict]) -> Iterable:
        up = GaugeMetricFamily("celery_worker_up", "Indicates if a worker has recently sent a heartbeat.",
                               labels=["hostname"])
        active = GaugeMetricFamily("celery_worker_tasks_active",
                                   "The number of tasks the worker is currently processing", labels=["hostname"])
        for w in workers:
            online = w["status"] == "online"
            up.add_metric([w["hostname"]], 1 if online else 0)
            active.add_metric([w["hostname"]], w["active"] if online else 0)
        yield up
        yield active

    def _inspect(self) -> tuple[dict[str, int], dict[str, int]]:
        """Workers and pool processes consuming each queue, asked of the workers (as celery-exporter does)."""
        from tasks.client import client_app

        app = client_app(self.settings.broker_url, name="taskmon-metrics")
        try:
            inspect = app.control.inspect(timeout=INSPECT_TIMEOUT)
            stats = inspect.stats() or {}
            queues = inspect.active_queues() or {}
        finally:
            app.close()
        processes = {w: len((s.get("pool") or {}).get("processes") or []) for w, s in stats.items()}
        workers_per: dict[str, int] = defaultdict(int)
        processes_per: dict[str, int] = defaultdict(int)
        for worker, infos in queues.items():
            for info in infos:
                workers_per[info["name"]] += 1
                processes_per[info["name"]] += processes.get(worker, 0)
        return dict(workers_per), dict(processes_per)

    def _queue_families(self, known: set[str], errors: dict[str, int]) -> Iterable:
        length = GaugeMetricFamily("celery_queue_length", "The number of message in broker queue.",
                                   labels=["queue_name"])
        consumers = GaugeMetricFamily("celery_active_consumer_count",
                                      "The number of active consumer in broker queue.", labels=["queue_name"])
        workers = GaugeMetricFamily("celery_active_worker_count",
                                    "The number of active workers in broker queue.", labels=["queue_name"])
        processes = GaugeMetricFamily("celery_active_process_count",
                                      "The number of active processes in broker queue.", labels=["queue_name"])
        try:
            workers_per, processes_per = self._inspect()
            names = sorted(known | set(workers_per))
            depths = queue_depths(self.settings, names)
        except Exception as exc:  # BrokerError, and whatever kombu raises for an unreachable broker
            log.warning("metrics: cannot read the broker: %s", first_line(exc))
            errors["broker"] += 1
            depths, workers_per, processes_per = [], {}, {}
        for d in depths:
            q = d["name"]
            if d["messages"] is not None:
                length.add_metric([q], d["messages"])
            if d["consumers"] is not None:
                consumers.add_metric([q], d["consumers"])
            workers.add_metric([q], workers_per.get(q, 0))
            processes.add_metric([q], processes_per.get(q, 0))
        yield from (length, consumers, workers, processes)

    # -- taskmon's own --------------------------------------------------------------------------

    def _taskmon_families(self, daemons: list[dict], dead_open: int | None, deliveries: dict[str, int],
                          read: bool) -> Iterable:
        now = datetime.now(timezone.utc)
        leader = cluster_leader(daemons, now, self.settings.heartbeat_stale_seconds)
        leader_id = leader["daemon_id"] if leader is not None else None
        if self.live is not None:
            live = self.live()
            own = next((d for d in daemons if d["daemon_id"] == live["daemon_id"]), None)
            rows = [(live["counters"], live["per_source"], live["writer_lag"],
                     (now - own["heartbeat_at"]).total_seconds() if own else None, live["leader"], [])]
            extra: list[str] = []
        else:
            rows = [(d["counters"], {d["sources"]: d["counters"].get("events_received", 0)}, d["writer_lag"] or 0.0,
                     (now - d["heartbeat_at"]).total_seconds(), d["daemon_id"] == leader_id, [d["daemon_id"]])
                    for d in daemons]
            extra = ["daemon"]

        def family(kind, name, doc, labels=()):
            return (CounterMetricFamily if kind == "c" else GaugeMetricFamily)(name, doc, labels=[*labels, *extra])

        received = family("c", "taskmon_events_received", "Events the daemon received, by source.", ["source"])
        written = family("c", "taskmon_rows_written", "Rows the daemon's writer committed (runs and workers).")
        events_written = family("c", "taskmon_events_written", "Events the daemon's writer committed.")
        malformed = family("c", "taskmon_events_malformed", "Events skipped as malformed, by reason.", ["reason"])
        dropped = family("c", "taskmon_events_dropped", "Events dropped because the buffer was full.")
        gaps = family("c", "taskmon_receiver_gaps", "Receiver gaps recorded (events possibly missed).")
        buffered = family("g", "taskmon_buffer_depth", "Events received and not yet taken by the writer.")
        lag = family("g", "taskmon_writer_lag_seconds", "Seconds the oldest event not yet committed has waited.")
        findings = family("c", "taskmon_detector_findings", "Detector findings, by kind.", ["kind"])
        age = family("g", "taskmon_heartbeat_age_seconds", "Seconds since the daemon's last stored heartbeat.")
        leads = family("g", "taskmon_daemon_leader",
                       "1 if the daemon leads the cluster (runs the detectors, alerts and reconciliation), else 0.")
        for counters, per_source, writer_lag, heartbeat_age, leading, labels in rows:
            for source, n in sorted(per_source.items()):
                received.add_metric([source, *labels], n)
            written.add_metric(labels, counters.get("rows_written", 0))
            events_written.add_metric(labels, counters.get("events_written", 0))
            for key, n in sorted(counters.items()):
                if key.startswith("malformed."):
                    malformed.add_metric([key.split(".", 1)[1], *labels], n)
            dropped.add_metric(labels, counters.get("events_dropped", 0))
            gaps.add_metric(labels, counters.get("gaps", 0))
            buffered.add_metric(labels, counters.get("buffered", 0))
            lag.add_metric(labels, writer_lag)
            for kind in FINDING_KINDS:
                findings.add_metric([kind, *labels], counters.get(f"detect.{kind}", 0))
            if heartbeat_age is not None:
                age.add_metric(labels, max(heartbeat_age, 0.0))
            leads.add_metric(labels, 1 if leading else 0)
        yield from (received, written, events_written, malformed, dropped, gaps, buffered, lag, findings, age, leads)
        if read:  # an unreadable store says nothing about the cluster (taskmon_metrics_scrape_errors does)
            has = GaugeMetricFamily("taskmon_cluster_has_leader",
                                    "1 if a live daemon leads the cluster (as `taskmon check` judges it), else 0.")
            has.add_metric([], 1 if leader is not None else 0)
            yield has
        if dead_open is not None:
            dead = GaugeMetricFamily("taskmon_dead_letters_open", "Dead letters not yet replayed or resolved.")
            dead.add_metric([], dead_open)
            yield dead
        alerts = GaugeMetricFamily("taskmon_alert_deliveries", "Alert e-mails in the store, by delivery status.",
                                   labels=["status"])
        for status in sorted(set(deliveries) | {"pending", "sending", "sent", "failed"}):
            alerts.add_metric([status], deliveries.get(status, 0))
        yield alerts


def registry_for(engine: Engine, settings: Settings, live: Live | None = None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TaskmonCollector(engine, settings, live))
    return registry


def render(engine: Engine, settings: Settings, live: Live | None = None) -> tuple[bytes, str]:
    """The exposition text and its content type, for a web server's /metrics."""
    return generate_latest(registry_for(engine, settings, live)), CONTENT_TYPE_LATEST


def asgi_app(engine: Engine, settings: Settings, live: Live | None = None):
    """An ASGI app serving the exposition (mount it at /metrics)."""
    from prometheus_client import make_asgi_app

    return make_asgi_app(registry_for(engine, settings, live))


def start_metrics_server(engine: Engine, settings: Settings, live: Live):
    """The daemon's own metrics port; returns (server, thread) from prometheus_client."""
    from prometheus_client import start_http_server

    started = time.monotonic()
    server, thread = start_http_server(settings.metrics_port, addr=settings.metrics_host,
                                       registry=registry_for(engine, settings, live))
    log.info("metrics on http://%s:%d/metrics (%.2fs)", settings.metrics_host, settings.metrics_port,
             time.monotonic() - started)
    return server, thread
