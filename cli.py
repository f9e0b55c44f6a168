"""`taskmon`: the command line. Thin: parse, call monitor/ or storage/, print.

The command families live in monitor/commands/; this module is the entry point
(console script `taskmon = cli:main`), the top-level group, `config` and `db`.
"""
from __future__ import annotations

import json
import logging
import sys

import click

from monitor.commands import alerts, daemon, detection, history, tasks_app
from monitor.commands import serve  # the HTTP API and its tokens
from monitor.commands import broker, schedule_beat  # noqa: F401 - schedule_beat adds schedule run/status
from monitor.commands import cluster
from monitor.commands.base import Context, settings_options
from tasks.settings import DESCRIPTIONS


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
    from sqlalchemy.exc import SQLAlchemyError

    from storage.db import DatabaseError, current_revision, head_revision, make_engine, require_existing, \
        unreachable_message

    engine = make_engine(ctx.settings.database_url)
    try:
        require_existing(engine)
        current = current_revision(engine)
    except (DatabaseError, SQLAlchemyError) as exc:
        raise click.ClickException(unreachable_message(engine, exc)) from None
    click.echo(f"current: {current or 'empty'}  head: {head_revision()}")
    if current != head_revision():
        sys.exit(1)


for _family in (daemon, history, detection, tasks_app, alerts, broker, serve, cluster):
    for _command in _family.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="taskmon")


if __name__ == "__main__":
    main()
