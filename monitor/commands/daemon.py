"""`taskmon run`, `check` and `demo`: the daemon and its health."""
from __future__ import annotations

import json
import sys

import click

from monitor.commands.base import Context, create_store, settings_options, SettingsUsageError


@click.command("run")
@settings_options
@click.option("--source", "sources", multiple=True, type=click.Choice(["auto", "pubsub", "stream", "amqp"]),
              help="Event source (repeatable); default from settings: auto.")
@click.option("--enable-events/--no-enable-events", default=True, show_default=True,
              help="Broadcast enable_events to workers on start, as Flower does.")
@click.option("--batch-size", default=50_000, show_default=True, type=click.IntRange(1, 100_000),
              help="Most events written in one transaction.")
@click.option("--buffer-events", default=200_000, show_default=True, type=click.IntRange(1000, 10_000_000),
              help="Events held in memory while the database is slow or away.")
@click.option("--prepare-processes", default=1, show_default=True, type=click.IntRange(0, 8),
              help="Helper processes that turn events into rows while the writer commits; 0: the writer does it.")
def run_cmd(ctx: Context, sources: tuple, enable_events: bool, batch_size: int, buffer_events: int,
            prepare_processes: int) -> None:
    """Consume Celery events and write every task execution to the history database."""
    from monitor.daemon import Daemon, RunOptions

    engine = create_store(ctx)
    options = RunOptions(sources=sources or ctx.settings.event_sources, enable_events=enable_events,
                         batch_size=batch_size, buffer_events=buffer_events, prepare_processes=prepare_processes)
    try:
        daemon = Daemon(ctx.settings, engine, options)
    except ValueError as exc:
        raise SettingsUsageError(str(exc)) from None
    sys.exit(daemon.serve())


@click.command("check")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check_cmd(ctx: Context, as_json: bool) -> None:
    """Exit 0 when the daemon is alive and the database reachable, 1 (with the reason) otherwise."""
    from datetime import datetime, timezone

    from monitor.health import Health, check
    from storage.db import DatabaseError, make_engine, require_existing

    engine = make_engine(ctx.settings.database_url)
    try:
        require_existing(engine)
        health = check(engine, datetime.now(timezone.utc), ctx.settings.heartbeat_stale_seconds)
    except DatabaseError as exc:
        health = Health(False, str(exc))
    if as_json:
        status = health.status or {}
        click.echo(json.dumps({"ok": health.ok, "reason": health.reason,
                               "daemon_id": status.get("daemon_id"),
                               "heartbeat_at": status["heartbeat_at"].isoformat() if status.get("heartbeat_at") else None,
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

    from monitor.demo import DemoPlan, run_demo
    from monitor.redis_server import RedisUnavailable

    try:
        code = run_demo(DemoPlan(duration=duration, rate=rate, workdir=Path.cwd()), click.echo,
                        timezone=ctx.settings.timezone)
    except RedisUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(code)


COMMANDS = (run_cmd, check_cmd, demo_cmd,)
