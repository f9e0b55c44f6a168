"""taskmon's configuration: one typed object, loaded in one place.

Precedence: CLI flag > environment (``TASKMON_*``) > config file (TOML) > default.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from tasks.redact import mask_url

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "TASKMON_"
CONFIG_ENV = "TASKMON_CONFIG"


class SettingsError(ValueError):
    """A setting has a value taskmon cannot use; the message names the setting."""


@dataclass(frozen=True)
class Settings:
    broker_url: str = "redis://localhost:6379/0"
    result_backend: str = ""
    database_url: str = "sqlite:///taskmon.db"
    timezone: str = "UTC"
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_security: str = "none"
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from: str = "taskmon@localhost"
    alert_recipients: tuple[str, ...] = ()
    retention_days: int = 30
    retention_max_records: int = 0
    field_max_bytes: int = 16384
    event_sources: tuple[str, ...] = ("auto",)
    relay_url: str = ""
    # The daemon (`taskmon run`)
    enable_events: bool = True
    # Events per transaction at most. The writer takes what has arrived (flush_interval at low
    # rates); under load, bigger batches merge more events per row before any SQL runs.
    batch_size: int = 50_000
    flush_interval: float = 0.2
    buffer_events: int = 200_000
    # Helper processes that turn events into rows while the writer commits (monitor.ingest.prepare).
    prepare_processes: int = 1
    status_interval: float = 5.0
    log_interval: float = 60.0
    stop_timeout: float = 8.0
    enable_events_interval: float = 10.0
    relay_stream: str = "taskmon:events"
    relay_maxlen: int = 1_000_000
    amqp_queue: str = "taskmon.events"
    daemon_name: str = ""
    heartbeat_stale_seconds: int = 30
    report_recipients: tuple[str, ...] = ()
    cleanup_chunk_size: int = 5000
    audit_retention_days: int = 365
    notification_retention_days: int = 30
    schedule_poll_interval: int = 5
    backup_dir: str = "backups"
    backup_keep: int = 7
    # Detection
    detect_interval: float = 10.0
    queue_sample_interval: float = 60.0
    task_time_limit: float = 600.0
    timeouts: tuple[tuple[str, float], ...] = ()
    lost_after_heartbeats: float = 2.0
    stuck_after: float = 300.0
    # Alerts
    alerts: tuple = ()  # tasks.alert_rules.Rule objects; empty: the default rules
    alert_digest_interval: float = 900.0
    alert_retry_delay: float = 30.0
    alert_retry_max_delay: float = 600.0
    alert_max_retries: int = 500
    alert_resend_after: float = 900.0
    # Prometheus metrics (monitor/metrics)
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    metrics_label_limit: int = 500
    broker_global_keyprefix: str = ""
    # The HTTP API and dashboard (`taskmon serve`)
    http_host: str = "127.0.0.1"
    http_port: int = 5555  # Flower's
    http_workers: int = 0  # 0: http_workers_for(settings, os.cpu_count())
    bad_token_limit: str = "20/minute"
    # taskmon's own workers (`celery -A tasks worker`); off by default, as in Celery: a pool restart
    # that reloads modules can leave a process with old and new code mixed.
    worker_pool_restarts: bool = False

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# One line each: shown by `taskmon config` and in the README settings table.
DESCRIPTIONS: dict[str, str] = {
    "broker_url": "Celery broker the daemon reads events from (redis://, amqp://)",
    "result_backend": "Celery result backend, used to reconcile tasks after an event gap; empty: none",
    "database_url": "SQLAlchemy URL of the history store (sqlite:///file.db, postgresql+psycopg://...)",
    "timezone": "IANA zone times are shown in; storage is always UTC",
    "smtp_host": "SMTP server for alert and report e-mail",
    "smtp_port": "SMTP port",
    "smtp_security": "none, starttls or ssl",
    "smtp_user": "SMTP login; empty: no login",
    "smtp_password": "SMTP password",
    "smtp_from": "From: address of taskmon's e-mail",
    "alert_recipients": "Comma-separated addresses that receive alerts and reports",
    "retention_days": "Task history (and queue-depth samples) older than this many days is removed by cleanup; 0 keeps all",
    "retention_max_records": "Cleanup keeps at most this many newest task runs; 0: no cap",
    "field_max_bytes": "args/kwargs/result/traceback longer than this are truncated and marked",
    "event_sources": "Comma-separated: pubsub, stream (durable relay), amqp, or auto (pubsub+stream on Redis, amqp on "
                     "RabbitMQ, plus stream when relay_url is set)",
    "relay_url": "Redis the durable relay writes to and the daemon reads the relay stream from; empty: the broker "
                 "(when it is Redis). Set it for a RabbitMQ broker, and in the apps' environment too",
    "enable_events": "The daemon broadcasts enable_events to every worker, as Flower does (`--no-enable-events`: off)",
    "batch_size": "Most events the daemon's writer takes and merges at once (1-100000); it commits them in "
                  "transactions of ~0.1 s each and acks them after the last",
    "flush_interval": "Seconds the writer waits for more events before it writes a partial batch",
    "buffer_events": "Events held in memory while the database is slow or away (1000-10000000); pub/sub drops "
                     "and counts beyond it, durable sources wait",
    "prepare_processes": "Helper processes that turn events into rows while the writer commits (0-8); 0: the "
                         "writer does it",
    "status_interval": "Seconds between the daemon's heartbeats in daemon_status; must be less than "
                       "heartbeat_stale_seconds",
    "log_interval": "Seconds between the daemon's log lines with its rates",
    "stop_timeout": "Seconds the daemon spends on SIGTERM writing what it holds before it gives up",
    "enable_events_interval": "Seconds between enable_events broadcasts, for workers started after the daemon",
    "relay_stream": "Redis stream the durable relay writes events to",
    "relay_maxlen": "Approximate cap on the relay stream's length (oldest entries trimmed)",
    "amqp_queue": "Durable RabbitMQ queue the daemon binds to the celeryev exchange",
    "daemon_name": "This daemon's id in daemon_status and its stream consumer name; empty: host-N, the first "
                   "slot free on this host (stable across restarts)",
    "heartbeat_stale_seconds": "`taskmon check` fails when the daemon's heartbeat is older than this, a source "
                               "has been disconnected or the writer behind for longer",
    "report_recipients": "Comma-separated addresses that receive the scheduled reports; empty: alert_recipients",
    "cleanup_chunk_size": "Rows cleanup deletes per transaction, so a large delete never holds a long lock",
    "audit_retention_days": "Audit log entries older than this many days are removed by cleanup; 0 keeps all",
    "notification_retention_days": "Read or delivered notifications older than this many days are removed; 0 keeps all",
    "schedule_poll_interval": "Seconds between beat's checks of the periodic_tasks table for edits",
    "backup_dir": "Directory backup_database writes backups to",
    "backup_keep": "backup_database keeps this many newest backups and deletes older ones; 0 keeps all",
    "detect_interval": "Seconds between the daemon's detector sweeps (timeouts, lost, stuck, dead letters); 0: off",
    "queue_sample_interval": "Seconds between the leader daemon's samples of each queue's depth (queue_depths, the Queues page's history); 0: off",
    "task_time_limit": "Seconds a task may run before it is a TIMEOUT, unless `timeouts` names it",
    "timeouts": "Per-task limits overriding task_time_limit: the [timeouts] table (name or glob = seconds), "
                "or name=seconds,glob=seconds",
    "lost_after_heartbeats": "A worker silent for this many of its heartbeat intervals is lost, and its "
                             "running tasks LOST",
    "stuck_after": "A task sent but not started this many seconds after it was due is flagged stuck",
    "alerts": "Alert rules: the [alerts] table (see Alerts), or the same as a JSON object; default: every rule on",
    "alert_digest_interval": "Seconds between digests of one alert group: further occurrences are counted and "
                             "mailed together at most this often",
    "alert_retry_delay": "Seconds before the first retry of an alert e-mail that could not be sent; doubles per retry",
    "alert_retry_max_delay": "Cap in seconds on the delay between retries of an alert e-mail",
    "alert_max_retries": "Retries of an alert e-mail before it stays failed (500 x 600 s: about 3.5 days)",
    "alert_resend_after": "The daemon sends the alert task again for a pending or failed alert whose retry is "
                          "this many seconds overdue (a lost task message)",
    "metrics_port": "Port on which the daemon serves Prometheus metrics at /metrics; 0: off",
    "metrics_host": "Address the daemon's metrics port listens on",
    "metrics_label_limit": "Most task names (and exception types) the metrics label; the rest are \"other\", counted",
    "broker_global_keyprefix": "The Redis transport's global_keyprefix, if the app sets one: queue lengths, "
                               "purge, send, inspect, worker control and beat's tick use the prefixed keys",
    "http_host": "Address `taskmon serve` listens on; 0.0.0.0 for every interface",
    "http_port": "Port `taskmon serve` listens on (the API, the dashboard and /metrics)",
    "http_workers": "Server processes of `taskmon serve` (1-64); 0: one per CPU, at most 4. Each keeps its own "
                    "count of bad tokens",
    "bad_token_limit": "Bad tokens one address may send (to one server process) before it gets 429s, e.g. 20/minute",
    "worker_pool_restarts": "taskmon's own workers accept `taskmon worker pool-restart` (Celery's "
                            "worker_pool_restarts); off: they refuse it",
}

SECRET_FIELDS = {"smtp_password"}
TABLE_FIELDS = {"timeouts", "alerts"}  # settings written as a TOML table
URL_FIELDS = {"broker_url", "result_backend", "database_url", "relay_url"}
# What event_sources may name (the daemon's source registry builds each; `taskmon run --source` offers them).
EVENT_SOURCES = ("auto", "pubsub", "stream", "amqp")


@dataclass(frozen=True)
class LoadedSettings:
    """The effective settings and, for each one, where its value came from."""

    settings: Settings
    origins: Mapping[str, str] = field(default_factory=dict)
    config_path: Path | None = None
    flags: Mapping[str, Any] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, str, str]]:
        """(name, displayable value, origin) for every setting, secrets masked."""
        out = []
        for f in fields(Settings):
            value = getattr(self.settings, f.name)
            out.append((f.name, display_value(f.name, value), self.origins.get(f.name, "default")))
        return out

    def with_flags(self, flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> "LoadedSettings":
        """The same settings with more command-line flags (a command's own options, e.g. `taskmon run`'s)."""
        return load_settings({**self.flags, **flags}, environ=environ, config_path=self.config_path)


def display_value(name: str, value: Any) -> str:
    if name in SECRET_FIELDS:
        return "***" if value else ""
    if name in URL_FIELDS:
        return mask_url(value)
    if name == "timeouts":
        return ",".join(f"{glob}={seconds:g}" for glob, seconds in value)
    if name == "alerts":
        from tasks.alert_rules import default_rules, describe

        return describe(value or default_rules())
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _coerce(name: str, raw: Any) -> Any:
    """Turn a raw value (str from env/flags, any TOML type) into the field's type."""
    default = getattr(Settings, name)
    if name == "timeouts":
        return _coerce_timeouts(raw)
    if name == "alerts":
        from tasks.alert_rules import RuleError, parse_rules

        try:
            return parse_rules(raw)
        except RuleError as exc:
            raise SettingsError(str(exc)) from None
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if isinstance(default, int):
            if isinstance(raw, bool):
                raise ValueError(raw)
            return int(raw)
        if isinstance(default, float):
            if isinstance(raw, bool):
                raise ValueError(raw)
            return float(raw)
        if isinstance(default, tuple):
            items = raw if isinstance(raw, (list, tuple)) else str(raw).split(",")
            return tuple(str(i).strip() for i in items if str(i).strip())
        if not isinstance(raw, str):
            raise ValueError(raw)
        return raw
    except (TypeError, ValueError):
        kind = type(default).__name__ if not isinstance(default, tuple) else "list"
        raise SettingsError(f"{name}: expected {kind}, got {raw!r}") from None


def _coerce_timeouts(raw: Any) -> tuple[tuple[str, float], ...]:
    """A [timeouts] table ({"name or glob": seconds}) or "glob=seconds,glob=seconds" -> pairs."""
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, str):
        items = []
        for part in filter(None, (p.strip() for p in raw.split(","))):
            glob, sep, seconds = part.rpartition("=")
            if not sep or not glob.strip():
                raise SettingsError(f"timeouts: expected name=seconds, got {part!r}")
            items.append((glob.strip(), seconds.strip()))
    else:
        raise SettingsError(f"timeouts: expected a table of name = seconds, got {raw!r}")
    out = []
    for glob, seconds in items:
        try:
            if isinstance(seconds, bool):
                raise ValueError(seconds)
            value = float(seconds)
        except (TypeError, ValueError):
            raise SettingsError(f"timeouts: {glob}: expected seconds, got {seconds!r}") from None
        if value <= 0:
            raise SettingsError(f"timeouts: {glob}: must be more than 0, got {seconds!r}")
        out.append((str(glob), value))
    return tuple(out)


def validate(s: Settings) -> Settings:
    try:
        ZoneInfo(s.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"timezone: unknown time zone {s.timezone!r} (use an IANA name such as Asia/Shanghai)") from None
    _check_url("broker_url", s.broker_url, {"redis", "rediss", "amqp", "amqps", "pyamqp", "memory"})
    if s.result_backend:
        _check_url("result_backend", s.result_backend, None)
    if s.relay_url:
        _check_url("relay_url", s.relay_url, {"redis", "rediss", "unix"})
    _check_database_url(s.database_url)
    for source in s.event_sources:
        if source not in EVENT_SOURCES:
            raise SettingsError(f"event_sources: unknown source {source!r} (use pubsub, stream, amqp or auto)")
    if not s.event_sources:
        raise SettingsError("event_sources: name at least one source")
    if s.heartbeat_stale_seconds < 1:
        raise SettingsError(f"heartbeat_stale_seconds: must be 1 or more, got {s.heartbeat_stale_seconds}")
    for name, low, high in RANGES:
        if not low <= getattr(s, name) <= high:
            raise SettingsError(f"{name}: must be {low:,} to {high:,}, got {getattr(s, name):,}")
    for name in ("flush_interval", "status_interval", "log_interval", "stop_timeout", "enable_events_interval"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name}: must be more than 0, got {getattr(s, name):g}")
    for name in ("retention_days", "retention_max_records", "field_max_bytes", "relay_maxlen",
                 "audit_retention_days", "notification_retention_days", "backup_keep"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{name}: must be 0 or more, got {getattr(s, name)}")
    if s.field_max_bytes and s.field_max_bytes < 256:
        raise SettingsError(f"field_max_bytes: must be at least 256, got {s.field_max_bytes}")
    for name in ("detect_interval", "queue_sample_interval"):
        if getattr(s, name) < 0:
            raise SettingsError(f"{name}: must be 0 (off) or more, got {getattr(s, name):g}")
    for name in ("task_time_limit", "stuck_after"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name}: must be more than 0, got {getattr(s, name):g}")
    if s.lost_after_heartbeats < 1:
        raise SettingsError(f"lost_after_heartbeats: must be 1 or more, got {s.lost_after_heartbeats:g}")
    for name in ("alert_digest_interval", "alert_retry_delay", "alert_retry_max_delay", "alert_resend_after"):
        if getattr(s, name) <= 0:
            raise SettingsError(f"{name}: must be more than 0, got {getattr(s, name):g}")
    if s.alert_max_retries < 0:
        raise SettingsError(f"alert_max_retries: must be 0 or more, got {s.alert_max_retries}")
    if not 0 < s.smtp_port < 65536:
        raise SettingsError(f"smtp_port: must be 1-65535, got {s.smtp_port}")
    if s.smtp_security not in {"none", "starttls", "ssl"}:
        raise SettingsError(f"smtp_security: must be none, starttls or ssl, got {s.smtp_security!r}")
    for name in ("cleanup_chunk_size", "schedule_poll_interval"):
        if getattr(s, name) < 1:
            raise SettingsError(f"{name}: must be 1 or more, got {getattr(s, name)}")
    for name in ("alert_recipients", "report_recipients"):
        for addr in getattr(s, name):
            if "@" not in addr:
                raise SettingsError(f"{name}: {addr!r} is not an e-mail address")
    return s


# Integer settings with bounds: (name, lowest, highest).
RANGES = (("batch_size", 1, 100_000), ("buffer_events", 1000, 10_000_000), ("prepare_processes", 0, 8),
          ("metrics_port", 0, 65535), ("metrics_label_limit", 1, 100_000), ("http_port", 0, 65535),
          ("http_workers", 0, 64))
MAX_AUTO_HTTP_WORKERS = 4


def http_workers_for(settings: Settings, cpus: int | None) -> int:
    """The server processes `taskmon serve` runs: the setting, or for 0 one per CPU, at most 4
    (each answers on one core at a time; more only add memory and SQLite readers)."""
    if settings.http_workers:
        return settings.http_workers
    return max(1, min(cpus or 1, MAX_AUTO_HTTP_WORKERS))


def _check_url(name: str, url: str, schemes: set[str] | None) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise SettingsError(f"{name}: cannot parse URL {mask_url(url)!r}: {exc}") from None
    scheme = parts.scheme.split("+", 1)[0]
    if not scheme or (schemes is not None and scheme not in schemes):
        allowed = ", ".join(sorted(schemes or ()))
        raise SettingsError(f"{name}: unsupported URL {mask_url(url)!r} (expected one of: {allowed})")


# SQLAlchemy's URL syntax (sqlalchemy.engine.url._parse_url), so that settings are checked without
# importing SQLAlchemy: a command that opens SQLite with the standard library never pays for it.
_DATABASE_URL = re.compile(
    r"""(?P<name>[\w+]+)://(?:[^:/]*(?::[^@]*)?@)?(?:(?:\[[^/?]+\]|[^/:?]+)?(?::(?P<port>[^/?]*))?)?""")


def _check_database_url(url: str) -> None:
    m = _DATABASE_URL.match(url)
    if m is None or (m["port"] and not m["port"].isdigit()):
        raise SettingsError(f"database_url: cannot parse URL {mask_url(url)!r}")
    backend = m["name"].split("+", 1)[0]
    if backend not in {"sqlite", "postgresql"}:
        raise SettingsError(f"database_url: unsupported database {backend!r} (use sqlite or postgresql)")


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"config: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config: {path} is not valid TOML: {exc}") from None
    return data


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: str | os.PathLike | None = None,
) -> LoadedSettings:
    """Build the effective settings; raise SettingsError naming the bad setting."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    names = {f.name for f in fields(Settings)}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}

    path = config_path or environ.get(CONFIG_ENV) or None
    resolved = Path(path) if path else None
    file_data: dict[str, Any] = read_config_file(resolved) if resolved is not None else {}
    for key, raw in file_data.items():
        if key not in names:
            raise SettingsError(_unknown_in_file(key, raw, resolved, names))
        values[key], origins[key] = _coerce(key, raw), "file"

    for name in names:
        env_key = ENV_PREFIX + name.upper()
        if env_key in environ:
            values[name], origins[name] = _coerce(name, environ[env_key]), "env"

    for name, raw in flags.items():
        if name not in names:
            raise SettingsError(f"unknown setting {name!r}")
        values[name], origins[name] = _coerce(name, raw), "flag"

    settings = validate(dataclasses.replace(Settings(), **values))
    return LoadedSettings(settings, origins, resolved, flags)


def _unknown_in_file(key: str, raw: Any, path: Path | None, names: set[str]) -> str:
    """A misspelt top-level key or table is refused, never ignored: say which, and what was meant."""
    if isinstance(raw, dict):
        sub = next((k for k, v in raw.items() if isinstance(v, dict)), None)
        shown = f"[{key}.{sub}]" if sub else f"[{key}]"
        close = difflib.get_close_matches(key, sorted(TABLE_FIELDS), n=1)
        hint = f" (did you mean [{close[0]}{'.' + sub if sub else ''}]?)" if close else \
            f" (tables: {', '.join(f'[{t}]' for t in sorted(TABLE_FIELDS))})"
        return f"config: unknown table {shown} in {path}{hint}"
    close = difflib.get_close_matches(key, sorted(names), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else " (`taskmon config` lists every setting)"
    return f"config: unknown setting {key!r} in {path}{hint}"
