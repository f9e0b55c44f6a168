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
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # not a line per detector sweep


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
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(1, 100_000),
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

# -- detection: dead letters, replay, revoke (issue 6) --

LETTER_COLUMNS = ("dead_at", "reason", "state", "name", "task_id", "exception", "replayed_as")


def parse_since_option(ctx: Context, text: str | None):
    """--since as a UTC datetime (ISO 8601 in the configured zone, or 15m/2h/7d back from now); exit 2 if bad."""
    if text is None:
        return None
    from datetime import datetime, timezone

    from monitor.timeparse import TimeParseError, parse_since

    try:
        return parse_since(text, datetime.now(timezone.utc), ctx.settings.tz)
    except TimeParseError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None


def _local(ctx: Context, at) -> str:
    return at.astimezone(ctx.settings.tz).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _jsonable(row: dict) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


def _one_line(text: str | None, width: int) -> str:
    line = (text or "-").strip().splitlines()[0] if (text or "").strip() else "-"
    return line if len(line) <= width else line[: width - 3] + "..."


@cli.group("dead-letters", invoke_without_command=True)
@settings_options
@click.option("--name", "name_glob", metavar="GLOB", help="Only task names matching this glob (* and ?).")
@click.option("--reason", type=click.Choice(["failure", "timeout", "lost", "rejected"]), help="Only this reason.")
@click.option("--since", metavar="T", help="Only tasks that died since T: ISO 8601, or 15m / 2h / 7d ago.")
@click.option("--state", "letter_state", type=click.Choice(["open", "replayed", "resolved", "all"]), default="open",
              show_default=True, help="Which dead letters to list.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1), help="Most rows shown.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def dead_letters_group(click_ctx, ctx: Context, name_glob, reason, since, letter_state, limit, as_json) -> None:
    """List tasks that ended for good (FAILURE, TIMEOUT, LOST, REJECTED), newest first."""
    if click_ctx.invoked_subcommand is not None:
        click_ctx.obj = ctx  # `dead-letters --db URL resolve ID`: the subcommand uses these settings
        return
    from storage.deadletters import LETTER_STATES, list_dead_letters

    since_at = parse_since_option(ctx, since)
    states = LETTER_STATES if letter_state == "all" else (letter_state,)
    with open_store(ctx).connect() as conn:
        rows = list_dead_letters(conn, name=name_glob, reason=reason, since=since_at, states=states, limit=limit)
    if as_json:
        click.echo(json.dumps([_jsonable(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo(f"no {'' if letter_state == 'all' else letter_state + ' '}dead letters match")
        return
    table = [(_local(ctx, r["dead_at"]), r["reason"], r["state"], r["name"] or "-", r["task_id"],
              _one_line(r["exception"], 60), r["replayed_as"] or "-") for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(LETTER_COLUMNS, *table)]
    for line in [tuple(c.upper() for c in LETTER_COLUMNS), *table]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip())
    if len(rows) == limit:
        click.echo(f"(first {limit}; --limit for more)", err=True)


@dead_letters_group.command("resolve")
@settings_options
@click.argument("task_id")
@click.option("--note", default="resolved by hand", show_default=True, help="Why (stored as the resolution).")
def dead_letters_resolve(ctx: Context, task_id: str, note: str) -> None:
    """Mark a dead letter resolved: looked at, nothing more to do."""
    from datetime import datetime, timezone

    group_ctx = click.get_current_context().obj
    if isinstance(group_ctx, Context) and "flag" not in ctx.loaded.origins.values():
        ctx = group_ctx

    from storage.deadletters import get_dead_letter, resolve

    with open_store(ctx).begin() as conn:
        letter = get_dead_letter(conn, task_id)
        if letter is None:
            raise click.ClickException(f"no dead letter for task {task_id}: `taskmon dead-letters --state all` lists them")
        if letter["state"] == "resolved":
            click.echo(f"{task_id} was resolved already ({letter['resolution']})")
            return
        resolve(conn, task_id, note, datetime.now(timezone.utc))
    click.echo(f"resolved {task_id} ({letter['name']}, {letter['reason']})")


@cli.command("replay")
@settings_options
@click.argument("task_id", required=False)
@click.option("--name", "name_glob", metavar="GLOB", help="Bulk: open dead letters of task names matching GLOB.")
@click.option("--since", metavar="T", help="Bulk: open dead letters of tasks that died since T (ISO 8601, 15m, 2h, 7d).")
@click.option("--reason", type=click.Choice(["failure", "timeout", "lost", "rejected"]), help="Bulk: only this reason.")
@click.option("--queue", metavar="Q", help="Send to this queue instead of the original one.")
@click.option("--dry-run", is_flag=True, help="Bulk: show what would be replayed and what cannot be, send nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def replay_cmd(ctx: Context, task_id, name_glob, since, reason, queue, dry_run, yes) -> None:
    """Send a dead task again with its original name, args, kwargs and queue.

    TASK_ID replays one task. Without it, --name and/or --since replay the open dead letters they
    match. Only exact arguments are replayed: complete Python literals, no redacted secrets.
    Exit code 1 when a task cannot be replayed (the reason is printed).
    """
    from monitor.replay import BrokerError, NotReplayable, RecordError, celery_client, plan_many, plan_replay, replay
    from storage.deadletters import get_dead_letter, list_dead_letters
    from storage.runs import get_run

    if task_id and (name_glob or since or reason):
        raise click.UsageError("give TASK_ID, or --name/--since to replay dead letters in bulk, not both")
    if not task_id and not (name_glob or since):
        raise click.UsageError("give TASK_ID, or --name GLOB and/or --since T to replay dead letters in bulk")
    if task_id and dry_run:
        raise click.UsageError("--dry-run is for bulk replays (--name/--since)")
    engine = open_store(ctx)
    if task_id:
        with engine.connect() as conn:
            row, letter = get_run(conn, task_id), get_dead_letter(conn, task_id)
        if row is None:
            raise click.ClickException(f"no task {task_id} in the history")
        try:
            plan = plan_replay(row, queue)
        except NotReplayable as exc:
            raise click.ClickException(f"cannot replay {task_id} exactly: {exc}") from None
        if letter is not None and letter["replayed_as"]:
            click.echo(f"note: {task_id} was replayed before, as {letter['replayed_as']}", err=True)
        if row["state"] == "LOST":
            click.echo("note: with acks_late the broker may still deliver the original again", err=True)
        if not yes:
            click.confirm(f"Replay {plan.name}{plan.args!r} {plan.kwargs!r} to queue {plan.queue!r}?", abort=True)
        app = celery_client(ctx.settings.broker_url)
        try:
            new_id = replay(engine, app, plan)
        except (BrokerError, RecordError) as exc:
            raise click.ClickException(str(exc)) from None
        finally:
            app.close()
        click.echo(f"replayed {task_id} as {new_id} ({plan.name}, queue {plan.queue})")
        return

    since_at = parse_since_option(ctx, since)
    with engine.connect() as conn:
        letters = list_dead_letters(conn, name=name_glob, reason=reason, since=since_at, states=("open",))
        rows = {r["task_id"]: get_run(conn, r["task_id"]) for r in letters}
    plans, refused = plan_many(letters, rows, queue)
    for plan in plans:
        click.echo(f"{'would replay' if dry_run else 'replay'} {plan.task_id}  {plan.name}  queue {plan.queue}")
    for tid, why in refused:
        click.echo(f"cannot replay {tid}: {why}")
    click.echo(f"{len(plans)} to replay, {len(refused)} cannot be replayed exactly")
    if dry_run or not plans:
        sys.exit(1 if refused else 0)
    if not yes:
        click.confirm(f"Replay {len(plans)} tasks?", abort=True)
    app = celery_client(ctx.settings.broker_url)
    try:
        for plan in plans:
            try:
                new_id = replay(engine, app, plan)
            except (BrokerError, RecordError) as exc:
                raise click.ClickException(str(exc)) from None
            click.echo(f"replayed {plan.task_id} as {new_id}")
    finally:
        app.close()
    sys.exit(1 if refused else 0)


@cli.command("revoke")
@settings_options
@click.argument("task_id")
@click.option("--terminate", is_flag=True, help="Also kill the worker process running it (prefork pool).")
@click.option("--signal", "signal_name", default="SIGTERM", show_default=True, help="Signal --terminate sends.")
def revoke_cmd(ctx: Context, task_id: str, terminate: bool, signal_name: str) -> None:
    """Tell every worker not to run TASK_ID (and, with --terminate, to stop it if it runs).

    Workers remember revoked ids in memory only (unless started with --statedb): a worker that
    starts later may still run it.
    """
    from monitor.replay import BrokerError, celery_client, revoke
    from storage.db import DatabaseError, ensure_schema, make_engine
    from storage.runs import get_run

    row = None
    try:
        engine = make_engine(ctx.settings.database_url)
        ensure_schema(engine)
        with engine.connect() as conn:
            row = get_run(conn, task_id)
    except DatabaseError as exc:  # revoking must not depend on the history store
        click.echo(f"note: {exc}", err=True)
    app = celery_client(ctx.settings.broker_url)
    try:
        revoke(app, task_id, terminate=terminate, signal=signal_name)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        app.close()
    what = f"{row['name']}, {row['state']}" + (f" on {row['worker']}" if row.get("worker") else "") if row else \
        "not in the history"
    click.echo(f"revoke{' --terminate (' + signal_name + ')' if terminate else ''} sent for {task_id} ({what})")


def main() -> None:
    cli(prog_name="taskmon")


if __name__ == "__main__":
    main()
