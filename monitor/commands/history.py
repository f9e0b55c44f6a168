"""`taskmon history`, `show`, `stats`, `workers`, `queues` and `tail`: reading the history."""
from __future__ import annotations

import click

from monitor.commands.base import Context, json_option, open_store, read_connection, settings_options, time_option, utcnow


def _run_filter(ctx: Context, now, *, since=None, until=None, **fields):
    from storage.history import RunFilter

    tz = ctx.settings.tz
    return RunFilter(since=since.resolve(tz, now) if since else None, until=until.resolve(tz, now) if until else None,
                     **fields)




@click.command("history")
@settings_options
@click.option("--limit", "-n", default=20, show_default=True, type=click.IntRange(min=1), help="Newest N runs.")
@click.option("--name", metavar="GLOB", help="Task name or glob (* ? [...]), e.g. 'reports.*'.")
@click.option("--state", "states", multiple=True, metavar="STATE", help="Only this state (repeatable), e.g. FAILURE.")
@click.option("--worker", metavar="HOSTNAME", help="Only runs on this worker (celery@host).")
@click.option("--queue", metavar="QUEUE", help="Only runs sent to this queue.")
@time_option("--since", "First seen at or after: ISO 8601 or an age (15m, 2h, 7d).")
@time_option("--until", "First seen before: ISO 8601 or an age.")
@click.option("--failed", is_flag=True, help="Short for --state FAILURE.")
@click.option("--search", "-q", metavar="TEXT",
              help="Task id prefix, or text in the name, args, kwargs, result or exception (case-sensitive).")
@click.option("--sort", type=click.Choice(["seen", "started", "runtime"]), default="seen", show_default=True,
              help="Newest seen, newest started, or longest runtime first (the last two list runs that have one).")
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header line.")
def history_cmd(ctx: Context, limit, name, states, worker, queue, since, until, failed, search, sort, as_json,
                as_csv) -> None:
    """List task runs, newest first."""
    from monitor.commands.types import OneLineBadParameter
    from monitor.commands.history_render import history_table
    from monitor.commands.render import to_csv, to_json
    from storage.history import SUMMARY_FIELDS, UnknownState, check_states, list_runs

    if as_json and as_csv:
        raise OneLineBadParameter("use --json or --csv, not both", param_hint="'--csv'")
    f = _run_filter(ctx, utcnow(), name=name, states=states, worker=worker, queue=queue, since=since, until=until,
                    failed=failed, search=search or None)
    with read_connection(ctx) as conn:
        try:
            check_states(conn, f.all_states())
        except UnknownState as exc:
            raise OneLineBadParameter(str(exc), param_hint="'--state'") from None
        runs = list_runs(conn, f, limit=limit, sort=sort)
    tz = ctx.settings.tz
    if as_json:
        click.echo(to_json(runs, tz))
    elif as_csv:
        click.echo(to_csv(runs, SUMMARY_FIELDS, tz), nl=False)
    elif runs:
        click.echo(history_table(runs, tz))
    else:
        click.echo("no task runs match")


@click.command("show")
@settings_options
@click.argument("task_id")
@json_option
def show_cmd(ctx: Context, task_id, as_json) -> None:
    """Everything stored about one task run: fields, timeline, retries, parent/children/root."""
    from monitor.commands.history_render import show_text
    from monitor.commands.render import to_json
    from storage.history import run_detail
    from tasks.redact import mask_url

    from monitor.commands.backend_view import backend_view, backend_text

    with read_connection(ctx) as conn:
        detail = run_detail(conn, task_id)
    backend, note = backend_view(ctx, task_id, detail)
    if detail is None and backend is None:
        raise click.ClickException(f"no task run with id {task_id!r} in {mask_url(ctx.settings.database_url)}"
                                   + (f"; {note}" if note else ""))
    if as_json:
        extra = {"backend": backend.as_dict()} if backend else {}
        click.echo(to_json({**(detail or {"run": None}), **extra}, ctx.settings.tz))
    else:
        if detail is not None:
            click.echo(show_text(detail, ctx.settings.tz, ctx.settings.timezone))
        if backend is not None:
            click.echo(backend_text(task_id, backend, in_history=detail is not None))
    if note:
        click.echo(f"note: {note}", err=True)


@click.command("stats")
@settings_options
@time_option("--since", "Runs first seen at or after: ISO 8601 or an age (24h, 7d); default: all history.")
@click.option("--name", metavar="GLOB", help="Task name or glob (* ? [...]).")
@click.option("--exact", is_flag=True,
              help="Read every run for exact percentiles; default: the per-minute rollups, percentiles as bucket bounds.")
@json_option
def stats_cmd(ctx: Context, since, name, exact, as_json) -> None:
    """Per task name: counts by state, failure rate, throughput, runtime and queue-wait percentiles."""
    from monitor.commands.history_render import stats_table
    from monitor.commands.render import to_json
    from storage.rollup_stats import rollup_task_stats
    from storage.stats import task_stats

    now = utcnow()
    f = _run_filter(ctx, now, since=since, name=name)
    with open_store(ctx).connect() as conn:
        stats = task_stats(conn, f, now) if exact else rollup_task_stats(conn, f, now)
    if as_json:
        click.echo(to_json(stats, ctx.settings.tz))
    elif stats["tasks"]:
        click.echo(stats_table(stats, ctx.settings.tz))
        if stats.get("percentiles") == "buckets":
            click.echo("percentiles and max are histogram bucket bounds (the value is at most this); "
                       "--exact reads every run")
    else:
        click.echo("no task runs match")


@click.command("workers")
@settings_options
@json_option
def workers_cmd(ctx: Context, as_json) -> None:
    """Workers seen: online, offline, lost or unknown (silent while taskmon was not listening), heartbeat age, load."""
    from monitor.commands.history_render import workers_table
    from monitor.commands.render import to_json
    from monitor.worker_list import workers_seen

    with open_store(ctx).connect() as conn:
        rows = workers_seen(conn, utcnow(), ctx.settings)
    if as_json:
        click.echo(to_json(rows, ctx.settings.tz))
    elif rows:
        click.echo(workers_table(rows, ctx.settings.tz))
    else:
        click.echo("no workers seen yet")


@click.command("queues")
@settings_options
@click.option("--queue", "queues", multiple=True, metavar="QUEUE", help="Also this queue (repeatable).")
@json_option
def queues_cmd(ctx: Context, queues, as_json) -> None:
    """Live depth per queue from the broker: celery, the queues in the history, and --queue."""
    from monitor.commands.history_render import queues_table
    from monitor.broker.queues import BrokerError, queue_depths
    from monitor.commands.render import to_json
    from storage.history import known_queues

    with open_store(ctx).connect() as conn:
        names = {"celery", *known_queues(conn), *queues}
    try:
        rows = queue_depths(ctx.settings, names)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(to_json(rows, ctx.settings.tz) if as_json else queues_table(rows))


@click.command("tail")
@settings_options
@click.option("--name", metavar="GLOB", help="Task name or glob (* ? [...]).")
@click.option("--failed", is_flag=True, help="Only failed runs.")
@click.option("--lines", "-n", default=10, show_default=True, type=click.IntRange(min=0), help="Newest runs to show first.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(min=0), help="Seconds between polls.")
@click.option("--max-polls", type=click.IntRange(min=0), hidden=True, help="Stop after N polls (for tests).")
def tail_cmd(ctx: Context, name, failed, lines, interval, max_polls) -> None:
    """Follow new and changed task runs until Ctrl-C."""
    from monitor.commands.history_render import tail_line
    from monitor.commands.tail import follow
    from storage.history import RunFilter

    engine = open_store(ctx)
    try:
        for batch in follow(engine, RunFilter(name=name, failed=failed), initial=lines, interval=interval,
                            max_polls=max_polls):
            for run in batch:
                click.echo(tail_line(run, ctx.settings.tz))
    except KeyboardInterrupt:
        pass


COMMANDS = (history_cmd, show_cmd, stats_cmd, workers_cmd, queues_cmd, tail_cmd,)
