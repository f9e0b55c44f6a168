"""`taskmon run`, `check` and `demo`: the daemon and its health."""
from __future__ import annotations

import json
import sys

import click

from monitor.commands.base import Context, create_store, settings_options, SettingsUsageError
from tasks.settings import EVENT_SOURCES, SettingsError


@click.command("run")
@settings_options
@click.option("--source", "event_sources", multiple=True, type=click.Choice(EVENT_SOURCES),
              help="Event source (repeatable); default from settings (event_sources): auto.")
@click.option("--enable-events/--no-enable-events", "enable_events", default=None,
              help="Broadcast enable_events to workers, as Flower does (enable_events; default on).")
@click.option("--batch-size", type=int, metavar="N", help="Most events written in one transaction (batch_size).")
@click.option("--flush-interval", type=float, metavar="SECONDS",
              help="Seconds to wait for more events before writing a partial batch (flush_interval).")
@click.option("--buffer-events", type=int, metavar="N",
              help="Events held in memory while the database is slow or away (buffer_events).")
@click.option("--prepare-processes", type=int, metavar="N",
              help="Helper processes that turn events into rows while the writer commits; 0: the writer does it.")
@click.option("--status-interval", type=float, metavar="SECONDS", help="Seconds between heartbeats (status_interval).")
@click.option("--log-interval", type=float, metavar="SECONDS", help="Seconds between rate log lines (log_interval).")
@click.option("--stop-timeout", type=float, metavar="SECONDS",
              help="Seconds to write what is held on SIGTERM before giving up (stop_timeout).")
@click.option("--enable-events-interval", type=float, metavar="SECONDS",
              help="Seconds between enable_events broadcasts (enable_events_interval).")
def run_cmd(ctx: Context, **flags) -> None:
    """Consume Celery events and write every task execution to the history database.

    Exits 0 after SIGTERM/SIGINT, 1 when a thread it cannot keep running died (so that systemd or
    supervisor start it again), 2 on a bad setting.
    """
    from monitor.cluster import ClusterError
    from monitor.daemon import Daemon

    flags["event_sources"] = flags["event_sources"] or None
    try:
        ctx = Context(ctx.loaded.with_flags(flags))
    except SettingsError as exc:
        raise SettingsUsageError(str(exc)) from None
    engine = create_store(ctx)
    try:
        daemon = Daemon(ctx.settings, engine)
    except (ValueError, ClusterError) as exc:
        raise SettingsUsageError(str(exc)) from None
    sys.exit(daemon.serve())


@click.command("check")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output, with each source's state.")
def check_cmd(ctx: Context, as_json: bool) -> None:
    """Exit 0 when the daemon is alive, every source connected and the writer keeping up; 1 (with the reason) otherwise."""
    from datetime import datetime, timezone

    from monitor.health import Health, check
    from storage.db import DatabaseError, make_engine, require_existing

    engine = make_engine(ctx.settings.database_url)
    try:
        require_existing(engine)
        health = check(engine, datetime.now(timezone.utc), ctx.settings.heartbeat_stale_seconds,
                       ctx.settings.daemon_name)
    except DatabaseError as exc:
        health = Health(False, str(exc))
    if as_json:
        status = health.status or {}

        def iso(key):
            return status[key].isoformat() if status.get(key) else None

        click.echo(json.dumps({"ok": health.ok, "reason": health.reason, "daemon_id": status.get("daemon_id"),
                               "heartbeat_at": iso("heartbeat_at"), "sources": status.get("source_states") or {},
                               "writer_lag": status.get("writer_lag"), "feed_since": iso("feed_since"),
                               "role": status.get("role"), "leader": health.leader,
                               "counters": status.get("counters", {})}, indent=2))
    else:
        click.echo(("OK: " if health.ok else "FAIL: ") + health.reason)
    sys.exit(0 if health.ok else 1)



@click.command("demo")
@settings_options
@click.option("--duration", default=30.0, show_default=True, type=click.FloatRange(1, 3600),
              help="Seconds of sample traffic.")
@click.option("--rate", default=8.0, show_default=True, type=click.FloatRange(0.1, 500),
              help="Sample tasks sent per second.")
def demo_cmd(ctx: Context, duration: float, rate: float) -> None:
    """Run everything locally (Redis, worker + beat, daemon, SMTP sink) with sample traffic."""
    from pathlib import Path

    from monitor.demo import DemoPlan, run_demo, typed_program
    from monitor.redis_server import RedisUnavailable

    try:
        plan = DemoPlan(duration=duration, rate=rate, workdir=Path.cwd(), program=typed_program())
        code = run_demo(plan, click.echo, timezone=ctx.settings.timezone)
    except RedisUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


COMMANDS = (run_cmd, check_cmd, demo_cmd,)
