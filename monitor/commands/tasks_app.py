"""`taskmon schedule`, `cleanup` and `report`: the tasks app's schedule and jobs."""
from __future__ import annotations

import json
import sys

import click

from monitor.commands.base import Context, InputError, open_store, settings_options, utcnow
from monitor.commands.render import fmt_time


def _json_arg(option: str, text: str | None):
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{option}: not valid JSON ({exc.msg} at column {exc.colno}): {text}") from None


@click.group("schedule")
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
    app, now, tz = make_app(ctx.settings, set_as_current=False), utcnow(), ctx.settings.tz
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
            record(conn, utcnow(), f"schedule.{action}", name, detail)
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
    _schedule_edit(ctx, "add", name, lambda conn: add_schedule(conn, row, utcnow()))
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
    _schedule_edit(ctx, "set", name, lambda conn: update_schedule(conn, name, changes, utcnow()))
    schedule_columns = {"minute", "hour", "day_of_month", "month_of_year", "day_of_week", "interval_seconds"}
    click.echo(f"changed {name}: {', '.join(sorted({'schedule' if k in schedule_columns else k for k in changes}))}")


def _set_enabled(ctx: Context, name: str, enabled: bool) -> None:
    from storage.schedules import update_schedule

    _schedule_edit(ctx, "enable" if enabled else "disable", name,
                   lambda conn: update_schedule(conn, name, {"enabled": enabled}, utcnow()))
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


@click.command("cleanup")
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
                                now=utcnow(), days=days, max_records=max_records, audit_days=audit_days,
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


@click.command("report")
@settings_options
@click.argument("kind", type=click.Choice(["daily", "weekly", "monthly"]))
@click.option("--date", "day", metavar="YYYY-MM-DD",
              help="A day in the period to report on (default: the last complete period).")
@click.option("--format", "fmt", type=click.Choice(["text", "md", "json", "csv"]), default="text", show_default=True)
@click.option("--exact", is_flag=True,
              help="Read every run for the exact maximum runtimes; default: the rollups, maxima as bucket bounds.")
def report_cmd(ctx: Context, kind: str, day: str | None, fmt: str, exact: bool) -> None:
    """Print the daily, weekly or monthly report, computed from the history now (calendar periods in the time zone)."""
    from tasks.errors import BadInput
    from tasks.periods import parse_day, report_period
    from tasks.report_data import build_report
    from tasks.report_format import render

    try:
        period = report_period(kind, ctx.settings.tz, now=utcnow(), day=parse_day(day) if day else None)
    except BadInput as exc:
        raise InputError(str(exc)) from None
    with open_store(ctx).connect() as conn:
        report = build_report(conn, period, exact=exact)
    click.echo(render(report, fmt), nl=False)


COMMANDS = (schedule_group, cleanup_cmd, report_cmd,)
