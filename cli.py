"""`taskmon`: the command line. Thin: parse, call monitor/ or storage/, print."""
from __future__ import annotations

import functools
import json
import logging
import sys

import click

from monitor.settings import DESCRIPTIONS, LoadedSettings, SettingsError, load_settings


class SettingsUsageError(click.ClickException):
    """A bad setting: one line, exit code 2 (a usage error, like click's own)."""

    exit_code = 2


class Context:
    """What every command gets: the effective settings and how they were chosen."""

    def __init__(self, loaded: LoadedSettings):
        self.loaded = loaded
        self.settings = loaded.settings


def settings_options(fn):
    """--config/--broker/--db/--timezone on a command; hands it a Context as ``ctx``."""

    @click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="TASKMON_CONFIG",
                  help="TOML config file (env TASKMON_CONFIG).")
    @click.option("--broker", "broker_url", metavar="URL", help="Broker URL (env TASKMON_BROKER_URL).")
    @click.option("--db", "database_url", metavar="URL", help="History database URL (env TASKMON_DATABASE_URL).")
    @click.option("--timezone", "timezone", metavar="ZONE", help="Time zone to show times in (env TASKMON_TIMEZONE).")
    @functools.wraps(fn)
    def wrapper(config_path, broker_url, database_url, timezone, **kwargs):
        flags = {"broker_url": broker_url, "database_url": database_url, "timezone": timezone}
        try:
            loaded = load_settings(flags, config_path=config_path)
        except SettingsError as exc:
            raise SettingsUsageError(str(exc)) from None
        return fn(ctx=Context(loaded), **kwargs)

    return wrapper


def open_store(ctx: Context):
    """The history Engine, upgraded on first use; a clear one-line error when unreachable."""
    from storage.db import DatabaseError, ensure_schema, make_engine

    engine = make_engine(ctx.settings.database_url)
    try:
        ensure_schema(engine)
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    return engine


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(package_name="taskmon")
def cli(verbose: int) -> None:
    """taskmon: persistent history, statistics and alerts for Celery."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command("config")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def config_cmd(ctx: Context, as_json: bool) -> None:
    """Print the effective settings and where each one came from."""
    rows = ctx.loaded.rows()
    if as_json:
        click.echo(json.dumps({name: {"value": value, "source": source} for name, value, source in rows}, indent=2))
        return
    width = max(len(r[0]) for r in rows)
    if ctx.loaded.config_path:
        click.echo(f"# config file: {ctx.loaded.config_path}")
    for name, value, source in rows:
        click.echo(f"{name:<{width}}  {value or '-':<40}  [{source}]  {DESCRIPTIONS.get(name, '')}")


@cli.group("db")
def db_group() -> None:
    """Manage the history database schema."""


@db_group.command("upgrade")
@settings_options
def db_upgrade(ctx: Context) -> None:
    """Create or migrate the schema to the newest version (safe to run again)."""
    from storage.db import DatabaseError, make_engine, safe_url, upgrade

    engine = make_engine(ctx.settings.database_url)
    try:
        before, after = upgrade(engine)
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    if before == after:
        click.echo(f"{safe_url(engine)}: already at revision {after}")
    else:
        click.echo(f"{safe_url(engine)}: upgraded from {before or 'empty'} to {after}")


@db_group.command("current")
@settings_options
def db_current(ctx: Context) -> None:
    """Print the schema revision of the database and the newest one taskmon ships."""
    from sqlalchemy.exc import OperationalError

    from storage.db import current_revision, head_revision, make_engine, unreachable_message

    engine = make_engine(ctx.settings.database_url)
    try:
        current = current_revision(engine)
    except OperationalError as exc:
        raise click.ClickException(unreachable_message(engine, exc)) from None
    click.echo(f"current: {current or 'empty'}  head: {head_revision()}")
    if current != head_revision():
        sys.exit(1)


# -- daemon: run, check, demo (issue 4) --

@cli.command("run")
@settings_options
@click.option("--source", "sources", multiple=True, type=click.Choice(["auto", "pubsub", "stream", "amqp"]),
              help="Event source (repeatable); default from settings: auto.")
@click.option("--enable-events/--no-enable-events", default=True, show_default=True,
              help="Broadcast enable_events to workers on start, as Flower does.")
@click.option("--batch-size", default=50_000, show_default=True, type=click.IntRange(1, 100_000),
              help="Most events written in one transaction.")
@click.option("--buffer-events", default=200_000, show_default=True, type=click.IntRange(1000, 10_000_000),
              help="Events held in memory while the database is slow or away.")
def run_cmd(ctx: Context, sources: tuple, enable_events: bool, batch_size: int, buffer_events: int) -> None:
    """Consume Celery events and write every task execution to the history database."""
    from monitor.daemon import Daemon, RunOptions

    engine = open_store(ctx)
    options = RunOptions(sources=sources or ctx.settings.event_sources, enable_events=enable_events,
                         batch_size=batch_size, buffer_events=buffer_events)
    try:
        daemon = Daemon(ctx.settings, engine, options)
    except ValueError as exc:
        raise SettingsUsageError(str(exc)) from None
    sys.exit(daemon.serve())


@cli.command("check")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def check_cmd(ctx: Context, as_json: bool) -> None:
    """Exit 0 when the daemon is alive and the database reachable, 1 (with the reason) otherwise."""
    from datetime import datetime, timezone

    from monitor.health import check
    from storage.db import make_engine

    health = check(make_engine(ctx.settings.database_url), datetime.now(timezone.utc),
                   ctx.settings.heartbeat_stale_seconds)
    if as_json:
        status = health.status or {}
        click.echo(json.dumps({"ok": health.ok, "reason": health.reason,
                               "daemon_id": status.get("daemon_id"),
                               "heartbeat_at": status["heartbeat_at"].isoformat() if status.get("heartbeat_at") else None,
                               "counters": status.get("counters", {})}, indent=2))
    else:
        click.echo(("OK: " if health.ok else "FAIL: ") + health.reason)
    sys.exit(0 if health.ok else 1)


def main() -> None:
    cli(prog_name="taskmon")


if __name__ == "__main__":
    main()
