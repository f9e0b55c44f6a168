"""Every table taskmon stores, as SQLAlchemy Core ``Table`` objects.

Migrations in ``storage/migrations`` create exactly these; docs/schema.md documents them.
"""
from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)

from storage.rollups import KEY, LEVELS, MEASURES, TOTALS_KEY, TOTALS_MEASURES
from storage.rollup_dims import DIMS
from storage.types import Money, UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per task execution (a Celery task id), merged from all of its events.
task_runs = Table(
    "task_runs",
    metadata,
    Column("task_id", String(255), primary_key=True),
    Column("name", String(255)),
    Column("state", String(16), nullable=False),
    Column("state_at", UTCDateTime),
    Column("args", Text),
    Column("kwargs", Text),
    Column("result", Text),
    Column("exception", Text),
    Column("exception_type", String(255)),
    Column("traceback", Text),
    Column("queue", String(255)),
    Column("routing_key", String(255)),
    Column("exchange", String(255)),
    Column("worker", String(255)),
    Column("root_id", String(255)),
    Column("parent_id", String(255)),
    Column("retries", Integer, nullable=False, server_default="0"),
    Column("eta", UTCDateTime),
    Column("expires", UTCDateTime),
    Column("seen_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("received_at", UTCDateTime),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
    Column("runtime", Float),
    Column("queue_wait", Float),
    Column("truncated", Boolean, nullable=False, server_default=false()),
    Column("updated_at", UTCDateTime, nullable=False),
    # Detection. The latest attempt's receipts: a second receive of the same attempt
    # (same retries count, another timestamp) is an acks_late redelivery.
    Column("received_attempt", Integer),
    Column("received_first_at", UTCDateTime),
    Column("redelivered", Boolean, nullable=False, server_default=false()),
    # Set by the detector sweep, never by events.
    Column("stuck_at", UTCDateTime),
    # Set by `taskmon replay` on the new run: the task id it re-sends.
    Column("replay_of", String(255)),
    Index(None, "seen_at"),
    Index(None, "name", "seen_at"),
    Index(None, "state", "seen_at"),
    Index(None, "worker", "seen_at"),
    Index(None, "updated_at"),
    Index(None, "finished_at"),
    Index(None, "started_at"),  # sort=started (migration 0012_history_search)
    Index(None, "runtime"),  # sort=runtime
    # Text search (storage.search) uses a pg_trgm GIN index on PostgreSQL (SQLite scans),
    # made by migration 0012_history_search and outside this metadata (tests/test_storage_contract.py).
    # Partial (migration 0007): only runs that link to another task take an index entry.
    Index(None, "parent_id", sqlite_where=text("parent_id IS NOT NULL"), postgresql_where=text("parent_id IS NOT NULL")),
    Index(None, "root_id", sqlite_where=text("root_id <> task_id"), postgresql_where=text("root_id <> task_id")),
    Index(None, "replay_of", sqlite_where=text("replay_of IS NOT NULL"), postgresql_where=text("replay_of IS NOT NULL")),
)

# One row per worker hostname, from worker-online / worker-heartbeat / worker-offline.
workers = Table(
    "workers",
    metadata,
    Column("hostname", String(255), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("last_heartbeat", UTCDateTime),
    Column("software", String(255)),
    Column("active", Integer, nullable=False, server_default="0"),
    Column("processed", Integer, nullable=False, server_default="0"),
    Column("loadavg", String(64)),
    Column("freq", Float),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Every interval in which events may have been lost, and why (loss accounting).
receiver_gaps = Table(
    "receiver_gaps",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source", String(32), nullable=False),
    Column("reason", String(32), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("ended_at", UTCDateTime),
    Column("events_lost", Integer),
    Column("detail", Text),
    Column("reconciled", Integer, nullable=False, server_default="0"),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("daemon_id", String(255)),  # the daemon that saw the gap
    Column("reconciled_at", UTCDateTime),  # NULL: the leader has still to ask the result backend
    Column("reconciled_by", String(255)),
    Index(None, "started_at"),
    Index("ix_receiver_gaps_unreconciled", "reconciled_at", "recorded_at"),
)

# Messages waiting per queue, sampled by the cluster's leader every queue_sample_interval
# seconds: the Queues page's depth history. Cleanup removes samples older than retention_days.
queue_depths = Table(
    "queue_depths",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sampled_at", UTCDateTime, nullable=False),
    Column("queue", String(255), nullable=False),
    Column("messages", BigInteger),
    Column("consumers", Integer),
    Index(None, "queue", "sampled_at"),
    Index(None, "sampled_at"),
)

# One row per running (or last run) daemon: its heartbeat and counters, read by `taskmon check`.
daemon_status = Table(
    "daemon_status",
    metadata,
    Column("daemon_id", String(255), primary_key=True),
    Column("hostname", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("sources", String(255), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("heartbeat_at", UTCDateTime, nullable=False),
    Column("stopped_at", UTCDateTime),
    Column("counters", Text, nullable=False),
    # Per source (JSON): connected or not, since when, thread alive, restarts, last error.
    Column("source_states", Text),
    Column("writer_lag", Float),  # seconds the oldest event received but not committed has waited
    Column("feed_since", UTCDateTime),  # since when every source is connected and the writer caught up
    Column("stop_reason", Text),  # why a daemon stopped itself (a thread that kept dying)
    Column("role", String(16)),  # leader (runs the detectors and alerts) or follower
    Index(None, "heartbeat_at"),
)

# -- the tasks app (tasks/): its beat schedule and what its jobs read and write ---------------------

# The beat schedule, read by tasks.scheduler.DatabaseScheduler and edited with `taskmon schedule`.
# A row has either the five crontab fields (in the configured time zone) or interval_seconds.
periodic_tasks = Table(
    "periodic_tasks",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("task", String(255), nullable=False),
    Column("minute", String(64)),
    Column("hour", String(64)),
    Column("day_of_month", String(64)),
    Column("month_of_year", String(64)),
    Column("day_of_week", String(64)),
    Column("interval_seconds", Integer),
    Column("args", Text, nullable=False, server_default="[]"),
    Column("kwargs", Text, nullable=False, server_default="{}"),
    Column("queue", String(255)),
    Column("enabled", Boolean, nullable=False, server_default=true()),
    Column("description", Text),
    Column("last_run_at", UTCDateTime),
    Column("total_run_count", Integer, nullable=False, server_default="0"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Administrative actions worth a record: schedule edits, cleanups that deleted something.
audit_logs = Table(
    "audit_logs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("actor", String(255), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(255)),
    Column("detail", Text),
    Index(None, "created_at"),
)

# Bearer tokens of the HTTP API: only a hash is kept, the token is shown once when created.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
)

# E-mail notifications: one row per message, so a redelivered task never sends it twice.
notifications = Table(
    "notifications",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("recipient", String(255), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("body", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error", Text),
    Column("dedup_key", String(255), unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("read_at", UTCDateTime),
    Index(None, "created_at"),
)

bills = Table(
    "bills",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("customer", String(255), nullable=False),
    Column("email", String(255)),
    Column("amount", Money, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("status", String(16), nullable=False, server_default="pending"),
    Column("due_date", Date, nullable=False),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("paid_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    Index(None, "status", "due_date"),
    Index(None, "paid_at"),
)

# Revenue of paid bills per calendar month (in the configured time zone) and currency.
monthly_revenue = Table(
    "monthly_revenue",
    metadata,
    Column("month", Date, primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("amount", Money, nullable=False),
    Column("bill_count", Integer, nullable=False),
    Column("computed_at", UTCDateTime, nullable=False),
)

# Hourly/daily/weekly/monthly reports computed from task_runs; data is the report as JSON.
reports = Table(
    "reports",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("period_start", UTCDateTime, nullable=False),
    Column("period_end", UTCDateTime, nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("data", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("emailed_at", UTCDateTime),
    UniqueConstraint("kind", "period_start"),
)

# One row per task that ended for good in FAILURE, TIMEOUT, LOST or REJECTED: what to look at,
# replay or resolve. Written by the detector sweep; state and replay link by the CLI.
dead_letters = Table(
    "dead_letters",
    metadata,
    Column("task_id", String(255), primary_key=True),
    Column("name", String(255)),
    Column("reason", String(16), nullable=False),
    Column("exception_type", String(255)),
    Column("exception", Text),
    Column("queue", String(255)),
    Column("worker", String(255)),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
    Column("dead_at", UTCDateTime, nullable=False),
    Column("state", String(16), nullable=False, server_default="open"),
    Column("replayed_as", String(255)),
    Column("replayed_at", UTCDateTime),
    Column("resolved_at", UTCDateTime),
    Column("resolution", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("alerted_at", UTCDateTime),  # claimed by an alert evaluation (NULL: not yet)
    Index(None, "dead_at"),
    Index(None, "state", "dead_at"),
    Index(None, "name", "dead_at"),
    Index("ix_dead_letters_unalerted", "alerted_at", "dead_at"),
)

# -- alerts -------------------------------------------------------------------------------

# One row per alert group (rule + task name + exception type; worker, queue, task name or schedule
# for condition rules): open or resolved, and what was counted but not mailed yet.
alert_groups = Table(
    "alert_groups",
    metadata,
    Column("group_key", String(512), primary_key=True),
    Column("rule", String(32), nullable=False),
    Column("status", String(16), nullable=False),
    Column("task_name", String(255)),
    Column("exception_type", String(255)),
    Column("target", String(255)),
    Column("since", UTCDateTime, nullable=False),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
    Column("total_count", Integer, nullable=False, server_default="0"),
    Column("pending_count", Integer, nullable=False, server_default="0"),
    Column("notified_at", UTCDateTime),
    Column("last_task_id", String(255)),
    Column("message", Text),
    Column("resolved_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    Index(None, "status"),
)

# One row per notification (fire, digest or resolved) and its delivery by the alerts.send_alert task.
alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("group_key", String(512), nullable=False),
    Column("rule", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("subject", Text, nullable=False),
    Column("recipients", Text, nullable=False),
    Column("task_name", String(255)),
    Column("exception_type", String(255)),
    Column("target", String(255)),
    Column("task_id", String(255)),
    Column("message", Text),
    Column("detail", Text, nullable=False, server_default="{}"),
    Column("occurrences", Integer, nullable=False),
    Column("total_count", Integer, nullable=False),
    Column("first_seen", UTCDateTime, nullable=False),
    Column("last_seen", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("last_error", Text),
    Column("next_attempt_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    Index(None, "created_at"),
    Index(None, "status", "next_attempt_at"),
    Index(None, "group_key"),
)

def _rollup_table(name: str, key: tuple[str, ...], measures: tuple[str, ...]) -> Table:
    """A table of rollup rows: the key (a time, then names) and the measures, in storage.rollups'
    order, which is the order of the triggers' INSERT columns."""
    key_type = {"minute": UTCDateTime, "hour": UTCDateTime, "state": String(16)}
    return Table(
        name,
        metadata,
        *[Column(k, key_type.get(k, String(255)), primary_key=True) for k in key],
        *[Column(m, Float if m.endswith("_sum") else BigInteger, nullable=False) for m in measures],
    )


# Per minute of seen_at, task name, queue and state: kept equal to a GROUP BY over task_runs by
# triggers (storage/rollups.py), read by statistics and the metrics endpoint.
run_rollups = _rollup_table("run_rollups", (LEVELS["minute"][1],) + KEY[1:], MEASURES)

# The same per hour: long windows read a few rows per hour instead of sixty.
run_rollups_hourly = _rollup_table("run_rollups_hourly", (LEVELS["hour"][1],) + KEY[1:], MEASURES)

# Per task name, worker, queue and exception type: counts that only grow, kept by triggers
# (storage/rollups.py); the metrics endpoint's counters and histograms.
run_totals = _rollup_table("run_totals", TOTALS_KEY, TOTALS_MEASURES)

# Per hour of seen_at, worker and state; per hour, exception type, task name and state: run
# counts kept equal to a GROUP BY over task_runs by triggers (storage/rollup_dims.py), what
# reports rank workers and exceptions by.
worker_rollups_hourly = _rollup_table("worker_rollups_hourly", ("hour",) + DIMS["worker"][1], ("runs",))
exception_rollups_hourly = _rollup_table("exception_rollups_hourly", ("hour",) + DIMS["exception"][1], ("runs",))
