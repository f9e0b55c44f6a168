"""`taskmon`: the command line. Thin: parse, call monitor/ or storage/, print."""
from __future__ import annotations

import functools
import json
import logging
import sys

import click

from monitor.render import fmt_time
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

    from monitor.cli_types import OneLineBadParameter
    from monitor.timespec import resolve_time

    try:
        return resolve_time(text, ctx.settings.tz, datetime.now(timezone.utc))
    except ValueError as exc:
        raise OneLineBadParameter(str(exc), param_hint="'--since'") from None


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
    table = [(fmt_time(r["dead_at"], ctx.settings.tz), r["reason"], r["state"], r["name"] or "-", r["task_id"],
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


@cli.command("demo")
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


# -- history and statistics (issue 5) --

def _run_filter(ctx: Context, now, *, since=None, until=None, **fields):
    from storage.history import RunFilter

    tz = ctx.settings.tz
    return RunFilter(since=since.resolve(tz, now) if since else None, until=until.resolve(tz, now) if until else None,
                     **fields)


# -- tasks app: schedule, cleanup, report (issue 8) --

class InputError(click.ClickException):
    """Bad input to a command (a crontab, a date, a negative count): one line, exit code 2."""

    exit_code = 2


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def _time_option(name: str, help: str):
    from monitor.cli_types import TimeParam

    return click.option(name, type=TimeParam(), metavar="TIME", help=help)


_JSON = click.option("--json", "as_json", is_flag=True, help="Machine-readable output (times in the configured zone).")


@cli.command("history")
@settings_options
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1), help="Newest N runs.")
@click.option("--name", metavar="GLOB", help="Task name or glob (* ? [...]), e.g. 'reports.*'.")
@click.option("--state", "states", multiple=True, metavar="STATE", help="Only this state (repeatable), e.g. FAILURE.")
@click.option("--worker", metavar="HOSTNAME", help="Only runs on this worker (celery@host).")
@click.option("--queue", metavar="QUEUE", help="Only runs sent to this queue.")
@_time_option("--since", "First seen at or after: ISO 8601 or an age (15m, 2h, 7d).")
@_time_option("--until", "First seen before: ISO 8601 or an age.")
@click.option("--failed", is_flag=True, help="Short for --state FAILURE.")
@_JSON
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header line.")
def history_cmd(ctx: Context, limit, name, states, worker, queue, since, until, failed, as_json, as_csv) -> None:
    """List task runs, newest first."""
    from monitor.cli_types import OneLineBadParameter
    from monitor.history_render import history_table
    from monitor.render import to_csv, to_json
    from storage.history import SUMMARY_FIELDS, list_runs

    if as_json and as_csv:
        raise OneLineBadParameter("use --json or --csv, not both", param_hint="'--csv'")
    f = _run_filter(ctx, _now(), name=name, states=states, worker=worker, queue=queue, since=since, until=until,
                    failed=failed)
    with open_store(ctx).connect() as conn:
        runs = list_runs(conn, f, limit=limit)
    tz = ctx.settings.tz
    if as_json:
        click.echo(to_json(runs, tz))
    elif as_csv:
        click.echo(to_csv(runs, SUMMARY_FIELDS, tz), nl=False)
    elif runs:
        click.echo(history_table(runs, tz))
    else:
        click.echo("no task runs match")


@cli.command("show")
@settings_options
@click.argument("task_id")
@_JSON
def show_cmd(ctx: Context, task_id, as_json) -> None:
    """Everything stored about one task run: fields, timeline, retries, parent/children/root."""
    from monitor.history_render import show_text
    from monitor.render import to_json
    from storage.db import safe_url
    from storage.history import run_detail

    engine = open_store(ctx)
    with engine.connect() as conn:
        detail = run_detail(conn, task_id)
    if detail is None:
        raise click.ClickException(f"no task run with id {task_id!r} in {safe_url(engine)}")
    if as_json:
        click.echo(to_json(detail, ctx.settings.tz))
    else:
        click.echo(show_text(detail, ctx.settings.tz, ctx.settings.timezone))


@cli.command("stats")
@settings_options
@_time_option("--since", "Runs first seen at or after: ISO 8601 or an age (24h, 7d); default: all history.")
@click.option("--name", metavar="GLOB", help="Task name or glob (* ? [...]).")
@_JSON
def stats_cmd(ctx: Context, since, name, as_json) -> None:
    """Per task name: counts by state, failure rate, throughput, runtime and queue-wait percentiles."""
    from monitor.history_render import stats_table
    from monitor.render import to_json
    from storage.stats import task_stats

    now = _now()
    f = _run_filter(ctx, now, since=since, name=name)
    with open_store(ctx).connect() as conn:
        stats = task_stats(conn, f, now)
    if as_json:
        click.echo(to_json(stats, ctx.settings.tz))
    elif stats["tasks"]:
        click.echo(stats_table(stats, ctx.settings.tz))
    else:
        click.echo("no task runs match")


@cli.command("workers")
@settings_options
@_JSON
def workers_cmd(ctx: Context, as_json) -> None:
    """Workers seen: online/offline/lost, heartbeat age, active, processed, load."""
    from monitor.history_render import workers_table
    from monitor.render import to_json
    from storage.worker_status import list_workers

    with open_store(ctx).connect() as conn:
        rows = list_workers(conn, _now())
    if as_json:
        click.echo(to_json(rows, ctx.settings.tz))
    elif rows:
        click.echo(workers_table(rows, ctx.settings.tz))
    else:
        click.echo("no workers seen yet")


@cli.command("queues")
@settings_options
@click.option("--queue", "queues", multiple=True, metavar="QUEUE", help="Also this queue (repeatable).")
@_JSON
def queues_cmd(ctx: Context, queues, as_json) -> None:
    """Live depth per queue from the broker: celery, the queues in the history, and --queue."""
    from monitor.history_render import queues_table
    from monitor.queues import BrokerError, queue_depths
    from monitor.render import to_json
    from storage.history import known_queues

    with open_store(ctx).connect() as conn:
        names = {"celery", *known_queues(conn), *queues}
    try:
        rows = queue_depths(ctx.settings.broker_url, names)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(to_json(rows, ctx.settings.tz) if as_json else queues_table(rows))


@cli.command("tail")
@settings_options
@click.option("--name", metavar="GLOB", help="Task name or glob (* ? [...]).")
@click.option("--failed", is_flag=True, help="Only failed runs.")
@click.option("--lines", "-n", default=10, show_default=True, type=click.IntRange(min=0), help="Newest runs to show first.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0), help="Seconds between polls.")
@click.option("--max-polls", type=click.IntRange(min=0), hidden=True, help="Stop after N polls (for tests).")
def tail_cmd(ctx: Context, name, failed, lines, interval, max_polls) -> None:
    """Follow new and changed task runs until Ctrl-C."""
    from monitor.history_render import tail_line
    from monitor.tail import follow
    from storage.history import RunFilter

    engine = open_store(ctx)
    try:
        for batch in follow(engine, RunFilter(name=name, failed=failed), initial=lines, interval=interval,
                            max_polls=max_polls):
            for run in batch:
                click.echo(tail_line(run, ctx.settings.tz))
    except KeyboardInterrupt:
        pass


def _json_arg(option: str, text: str | None):
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{option}: not valid JSON ({exc.msg} at column {exc.colno}): {text}") from None


@cli.group("schedule")
def schedule_group() -> None:
    """The beat schedule kept in the database; beat picks up edits without a restart."""


@schedule_group.command("list")
@settings_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def schedule_list(ctx: Context, as_json: bool) -> None:
    """Every schedule entry with its last and next run, in the configured time zone."""
    from storage.schedules import list_schedules
    from tasks.application import make_app
    from tasks.cron import ScheduleError, describe, next_run

    with open_store(ctx).connect() as conn:
        rows = list_schedules(conn)
    app, now, tz = make_app(ctx.settings, set_as_current=False), _now(), ctx.settings.tz
    for row in rows:
        try:
            row["next_run_at"] = next_run(row, app, now) if row["enabled"] else None
        except ScheduleError:
            row["next_run_at"] = None
        row["schedule"] = describe(row)
    if as_json:
        keys = ("name", "task", "schedule", "args", "kwargs", "queue", "enabled", "last_run_at", "next_run_at",
                "total_run_count", "description")
        out = [{k: (row[k].astimezone(tz).isoformat() if k.endswith("_at") and row[k] else row[k]) for k in keys}
               for row in rows]
        click.echo(json.dumps(out, indent=2))
        return
    table = [("name", "task", "schedule", "queue", "on", "last run", "next run", "runs")]
    table += [(r["name"], r["task"], r["schedule"], r["queue"] or "-", "yes" if r["enabled"] else "no",
               fmt_time(r["last_run_at"], tz), fmt_time(r["next_run_at"], tz), str(r["total_run_count"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    click.echo(f"# times in {tz.key}")


def _schedule_edit(ctx: Context, action: str, name: str, edit) -> dict:
    """Run one edit of the schedule with its audit entry; one-line errors."""
    from storage.audit import record
    from storage.schedules import DEFINITION_COLUMNS, DuplicateSchedule, UnknownSchedule

    try:
        with open_store(ctx).begin() as conn:
            row = edit(conn)
            detail = {k: row[k] for k in DEFINITION_COLUMNS if k != "name"} if row else None
            record(conn, _now(), f"schedule.{action}", name, detail)
    except (UnknownSchedule, DuplicateSchedule) as exc:
        raise click.ClickException(str(exc)) from None
    return row


def _check_task_name(ctx: Context, task: str, any_task: bool) -> None:
    from tasks.application import make_app, task_names

    known = task_names(make_app(ctx.settings, set_as_current=False))
    if not any_task and task not in known:
        raise InputError(f"unknown task {task!r}: not one of taskmon's tasks (see docs/tasks.md); "
                         "--any-task schedules a task another app's worker runs")


def schedule_definition_options(fn):
    """--cron/--every/--args/--kwargs/--queue/--description/--any-task, shared by `schedule add` and `set`."""
    for option in reversed([
        click.option("--cron", metavar='"M H DOM MON DOW"',
                     help='Crontab in the configured time zone, e.g. "0 2 * * *" (replaces an interval).'),
        click.option("--every", type=int, metavar="SECONDS", help="Run every this many seconds (replaces a crontab)."),
        click.option("--args", "args_json", metavar="JSON", help="Positional arguments, a JSON list."),
        click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments, a JSON object."),
        click.option("--queue", help='Queue to send to; default or "": the task\'s route.'),
        click.option("--description", help="What the entry is for."),
        click.option("--any-task", is_flag=True, help="Allow a task taskmon's app does not define."),
    ]):
        fn = option(fn)
    return fn


@schedule_group.command("add")
@settings_options
@click.argument("name")
@click.argument("task")
@schedule_definition_options
@click.option("--disabled", is_flag=True, help="Add it switched off.")
def schedule_add(ctx: Context, name, task, cron, every, args_json, kwargs_json, queue, description, disabled,
                 any_task) -> None:
    """Add entry NAME that runs TASK on a crontab or an interval."""
    from storage.schedules import add_schedule
    from tasks.application import QUEUE_NAMES
    from tasks.cron import ScheduleError, definition

    try:
        row = definition(name, task, cron=cron, every=every, args=_json_arg("--args", args_json),
                         kwargs=_json_arg("--kwargs", kwargs_json), queue=queue, queues=QUEUE_NAMES,
                         enabled=not disabled, description=description)
    except ScheduleError as exc:
        raise InputError(str(exc)) from None
    _check_task_name(ctx, task, any_task)
    _schedule_edit(ctx, "add", name, lambda conn: add_schedule(conn, row, _now()))
    click.echo(f"added {name}: {task} at {cron or f'every {every}s'}{' (disabled)' if disabled else ''}")


@schedule_group.command("set")
@settings_options
@click.argument("name")
@click.option("--task", help="Task to run.")
@schedule_definition_options
def schedule_set(ctx: Context, name, task, cron, every, args_json, kwargs_json, queue, description, any_task) -> None:
    """Change entry NAME; what is not given stays as it is, and so does its run history."""
    from storage.schedules import update_schedule
    from tasks.application import QUEUE_NAMES
    from tasks.cron import ScheduleError, check_args, check_kwargs, check_queue, check_task, schedule_fields

    changes = {}
    try:
        if task is not None:
            changes["task"] = check_task(task)
        if cron is not None or every is not None:
            changes.update(schedule_fields(cron, every))
        if args_json is not None:
            changes["args"] = check_args(_json_arg("--args", args_json))
        if kwargs_json is not None:
            changes["kwargs"] = check_kwargs(_json_arg("--kwargs", kwargs_json))
        if queue is not None:
            changes["queue"] = check_queue(queue, QUEUE_NAMES)
    except ScheduleError as exc:
        raise InputError(str(exc)) from None
    if description is not None:
        changes["description"] = description
    if not changes:
        raise InputError("nothing to change: give --cron, --every, --task, --args, --kwargs, --queue or --description")
    if task is not None:
        _check_task_name(ctx, task, any_task)
    _schedule_edit(ctx, "set", name, lambda conn: update_schedule(conn, name, changes, _now()))
    schedule_columns = {"minute", "hour", "day_of_month", "month_of_year", "day_of_week", "interval_seconds"}
    click.echo(f"changed {name}: {', '.join(sorted({'schedule' if k in schedule_columns else k for k in changes}))}")


def _set_enabled(ctx: Context, name: str, enabled: bool) -> None:
    from storage.schedules import update_schedule

    _schedule_edit(ctx, "enable" if enabled else "disable", name,
                   lambda conn: update_schedule(conn, name, {"enabled": enabled}, _now()))
    click.echo(f"{'enabled' if enabled else 'disabled'} {name}")


@schedule_group.command("enable")
@settings_options
@click.argument("name")
def schedule_enable(ctx: Context, name: str) -> None:
    """Switch entry NAME on."""
    _set_enabled(ctx, name, True)


@schedule_group.command("disable")
@settings_options
@click.argument("name")
def schedule_disable(ctx: Context, name: str) -> None:
    """Switch entry NAME off."""
    _set_enabled(ctx, name, False)


@schedule_group.command("remove")
@settings_options
@click.argument("name")
def schedule_remove(ctx: Context, name: str) -> None:
    """Delete entry NAME."""
    from storage.schedules import remove_schedule

    _schedule_edit(ctx, "remove", name, lambda conn: remove_schedule(conn, name))
    click.echo(f"removed {name}")


@cli.command("cleanup")
@settings_options
@click.option("--days", type=int, help="Delete task history older than N days (default: retention_days; 0 keeps all).")
@click.option("--max-records", type=int, help="Keep at most the N newest task runs (default: retention_max_records; 0: no cap).")
@click.option("--audit-days", type=int, help="Delete audit log entries older than N days (default: audit_retention_days).")
@click.option("--notification-days", type=int,
              help="Delete read or delivered notifications older than N days (default: notification_retention_days).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cleanup_cmd(ctx: Context, days, max_records, audit_days, notification_days, dry_run, as_json) -> None:
    """Delete old task history, audit log entries, notifications and expired results, in short transactions."""
    from tasks.application import make_app
    from tasks.cleanup import run_cleanup
    from tasks.policies import BadInput

    engine = open_store(ctx)
    show_progress = not as_json and sys.stderr.isatty()

    def progress(table: str, _n: int, total: int) -> None:
        if show_progress:
            click.echo(f"\r{table}: {total:,} deleted    ", nl=False, err=True)

    try:
        deletions = run_cleanup(engine, ctx.settings, make_app(ctx.settings, set_as_current=False).backend,
                                now=_now(), days=days, max_records=max_records, audit_days=audit_days,
                                notification_days=notification_days, dry_run=dry_run, on_chunk=progress)
    except BadInput as exc:
        raise InputError(str(exc)) from None
    if show_progress:
        click.echo("", err=True)
    if as_json:
        click.echo(json.dumps({"dry_run": dry_run, "deletions": [d.as_dict() for d in deletions]}, indent=2))
        return
    verb = "would delete" if dry_run else "deleted"
    rows = [("table", "rule", verb)] + [(d.table, d.rule, "-" if d.count is None else str(d.count)) for d in deletions]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        click.echo(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}")
    if dry_run:
        click.echo("dry run: nothing was deleted")


@cli.command("report")
@settings_options
@click.argument("kind", type=click.Choice(["daily", "weekly", "monthly"]))
@click.option("--date", "day", metavar="YYYY-MM-DD",
              help="A day in the period to report on (default: the last complete period).")
@click.option("--format", "fmt", type=click.Choice(["text", "md", "json", "csv"]), default="text", show_default=True)
def report_cmd(ctx: Context, kind: str, day: str | None, fmt: str) -> None:
    """Print the daily, weekly or monthly report, computed from the history now (calendar periods in the time zone)."""
    from tasks.policies import BadInput
    from tasks.report_format import render
    from tasks.reports import build_report, parse_day, report_period

    try:
        period = report_period(kind, ctx.settings.tz, now=_now(), day=parse_day(day) if day else None)
    except BadInput as exc:
        raise InputError(str(exc)) from None
    with open_store(ctx).connect() as conn:
        report = build_report(conn, period)
    click.echo(render(report, fmt), nl=False)


# -- alerts (issue 7) --

ALERT_COLUMNS = ("created", "id", "kind", "rule", "status", "tries", "subject", "error")


@cli.group("alerts", invoke_without_command=True)
@settings_options
@_time_option("--since", "Alerts recorded at or after: ISO 8601 or an age (15m, 2h, 7d).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1), help="Most rows shown.")
@_JSON
@click.pass_context
def alerts_group(click_ctx, ctx: Context, since, limit, as_json) -> None:
    """Alert history, newest first, with delivery status (pending, sending, sent, failed)."""
    if click_ctx.invoked_subcommand is not None:
        click_ctx.obj = ctx  # `alerts --config F test`: the subcommand uses these settings
        return
    from monitor.render import to_json
    from storage.alerts import list_alerts

    since_at = since.resolve(ctx.settings.tz, _now()) if since else None
    with open_store(ctx).connect() as conn:
        rows = list_alerts(conn, since=since_at, limit=limit)
    if as_json:
        click.echo(to_json(rows, ctx.settings.tz))
        return
    if not rows:
        click.echo("no alerts" + (" since then" if since else " yet"))
        return
    table = [(fmt_time(r["created_at"], ctx.settings.tz), r["id"], r["kind"], r["rule"], r["status"], r["attempts"],
              _one_line(r["subject"], 90), _one_line(r["last_error"], 90)) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(ALERT_COLUMNS, *table)]
    for line in [tuple(c.upper() for c in ALERT_COLUMNS), *table]:
        click.echo("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip())
    if len(rows) == limit:
        click.echo(f"(first {limit}; --limit for more)", err=True)


@alerts_group.command("test")
@settings_options
@click.option("--to", "to", multiple=True, metavar="ADDR", help="Recipient (repeatable); default: alert_recipients.")
def alerts_test(ctx: Context, to) -> None:
    """Send a test alert e-mail through the alert path (render + SMTP); exit 1 with the SMTP error on failure."""
    from tasks.alerts import send_test
    from tasks.mail import MailError

    group_ctx = click.get_current_context().obj
    if isinstance(group_ctx, Context) and "flag" not in ctx.loaded.origins.values():
        ctx = group_ctx
    recipients = tuple(to) or tuple(ctx.settings.alert_recipients)
    if not recipients:
        raise click.ClickException("no recipient: pass --to ADDR or set alert_recipients")
    s = ctx.settings
    try:
        send_test(s, recipients)
    except MailError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"sent a test alert to {', '.join(recipients)} via {s.smtp_host}:{s.smtp_port} ({s.smtp_security})")


def main() -> None:
    cli(prog_name="taskmon")


if __name__ == "__main__":
    main()
