"""`taskmon dead-letters`, `replay` and `revoke`."""
from __future__ import annotations

import json
import sys

import click

from monitor.commands.base import Context, open_store, parse_since_option, settings_options
from monitor.commands.render import fmt_time, one_line, table as render_table


LETTER_COLUMNS = ("dead_at", "reason", "state", "name", "task_id", "exception", "replayed_as")


def _jsonable(row: dict) -> dict:
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


@click.group("dead-letters", invoke_without_command=True)
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
              one_line(r["exception"], 60), r["replayed_as"] or "-") for r in rows]
    click.echo(render_table([c.upper() for c in LETTER_COLUMNS], table, rule=False))
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


@click.command("replay")
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
    from tasks.replay import BrokerError, NotReplayable, RecordError, celery_client, plan_many, plan_replay, replay
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


@click.command("revoke")
@settings_options
@click.argument("task_id")
@click.option("--terminate", is_flag=True, help="Also kill the worker process running it (prefork pool).")
@click.option("--signal", "signal_name", default="SIGTERM", show_default=True, help="Signal --terminate sends.")
def revoke_cmd(ctx: Context, task_id: str, terminate: bool, signal_name: str) -> None:
    """Tell every worker not to run TASK_ID (and, with --terminate, to stop it if it runs).

    Workers remember revoked ids in memory only (unless started with --statedb): a worker that
    starts later may still run it.
    """
    from tasks.replay import BrokerError, celery_client, revoke
    from storage.db import DatabaseError, check_schema, make_engine
    from storage.runs import get_run

    row = None
    try:
        engine = make_engine(ctx.settings.database_url)
        check_schema(engine)
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


COMMANDS = (dead_letters_group, replay_cmd, revoke_cmd,)
