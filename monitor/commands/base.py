"""What every command shares: settings options, the Context, opening the store, common option types."""
from __future__ import annotations

import contextlib
import functools

import click

from tasks.settings import LoadedSettings, SettingsError, load_settings


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
    """The Engine of an existing history, upgraded when it is behind; a one-line error when there is none.

    What every command that reads or edits a history uses: none of them creates one."""
    from storage.db import DatabaseError, check_schema, make_engine

    engine = make_engine(ctx.settings.database_url)
    try:
        check_schema(engine)
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    return engine


def create_store(ctx: Context):
    """The history Engine, the store created or upgraded as needed (`taskmon run`); one-line errors."""
    from storage.db import DatabaseError, ensure_schema, make_engine

    engine = make_engine(ctx.settings.database_url)
    try:
        ensure_schema(engine)
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    return engine


@contextlib.contextmanager
def read_connection(ctx: Context):
    """A connection to read an existing history: a plain sqlite3 one for a SQLite file, so that the
    command never imports SQLAlchemy (most of its time otherwise), else a SQLAlchemy one."""
    from storage.store import SCHEMA_HEAD, DatabaseError, no_schema_message, open_history, sqlite_file

    path = sqlite_file(ctx.settings.database_url)
    if path is None:
        with open_store(ctx).connect() as conn:
            yield conn
        return
    try:
        conn, revision = open_history(path)
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        if revision is None:
            raise click.ClickException(no_schema_message(path))
        if revision != SCHEMA_HEAD:
            open_store(ctx).dispose()  # upgrades it
        yield conn
    finally:
        conn.close()


def parse_since_option(ctx: Context, text: str | None):
    """--since as a UTC datetime (ISO 8601 in the configured zone, or 15m/2h/7d back from now); exit 2 if bad."""
    if text is None:
        return None
    from datetime import datetime, timezone

    from monitor.commands.types import OneLineBadParameter
    from monitor.commands.timespec import resolve_time

    try:
        return resolve_time(text, ctx.settings.tz, datetime.now(timezone.utc))
    except ValueError as exc:
        raise OneLineBadParameter(str(exc), param_hint="'--since'") from None


class InputError(click.ClickException):
    """Bad input to a command (a crontab, a date, a negative count): one line, exit code 2."""

    exit_code = 2


def utcnow():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def time_option(name: str, help: str):
    from monitor.commands.types import TimeParam

    return click.option(name, type=TimeParam(), metavar="TIME", help=help)


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output (times in the configured zone).")
