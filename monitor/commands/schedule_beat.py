"""`taskmon schedule run NAME` and `taskmon schedule status`: the beat manager's parts that are not the service's.

Starting, stopping and reading beat's logs belong to systemd or supervisor (see README "Deploying").
"""
from __future__ import annotations

import sys

import click

from monitor.commands.base import Context, InputError, open_store, settings_options, utcnow
from monitor.commands.broker import client, json_flag, timeout_option, _echo_json
from monitor.commands.render import fmt_age, fmt_time
from monitor.commands.tasks_app import schedule_group


@schedule_group.command("run")
@settings_options
@click.argument("name")
@timeout_option
@json_flag
def schedule_run(ctx: Context, name: str, timeout: float, as_json: bool) -> None:
    """Send the periodic entry NAME's task now, with its args, kwargs and queue (beat's own timing is unchanged).

    \b
    Example:
      taskmon schedule run generate-daily-report
    """
    from monitor.broker.sending import send_task
    from storage.audit import record
    from storage.schedules import UnknownSchedule, get_schedule
    from tasks.application import ROUTES

    engine = open_store(ctx)
    try:
        with engine.connect() as conn:
            row = get_schedule(conn, name)
    except UnknownSchedule:
        raise InputError(f"no schedule entry named {name!r}; `taskmon schedule list` shows them") from None
    # Routed as beat routes it: the entry's queue, else the tasks app's routes.
    with client(ctx) as app:
        app.conf.update(task_routes=ROUTES, task_default_queue="default")
        task_id = send_task(app, row["task"], row["args"], row["kwargs"], queue=row["queue"] or None,
                            timeout=timeout)
    with engine.begin() as conn:
        record(conn, utcnow(), "schedule.run", target=name, detail={"task": row["task"], "task_id": task_id})
    engine.dispose()
    if as_json:
        _echo_json(ctx, {"name": name, "task": row["task"], "task_id": task_id})
    else:
        click.echo(f"{name}: sent {row['task']} as {task_id}")


def beat_alive_within(ctx: Context) -> float:
    """A tick older than this means beat is not running: it ticks at least every schedule_poll_interval."""
    return max(3.0 * ctx.settings.schedule_poll_interval, 15.0)


@schedule_group.command("status")
@settings_options
@timeout_option
@json_flag
def schedule_status(ctx: Context, timeout: float, as_json: bool) -> None:
    """Whether beat is alive (its last tick) and each entry's last run; exit 1 when beat is not ticking.

    Beat records its tick on a Redis broker only; elsewhere only the entries' last runs are shown.

    \b
    Example:
      taskmon schedule status --json
    """
    from storage.schedules import list_schedules
    from tasks.beat_tick import read_tick, tick_client
    from tasks.redact import mask_url

    now = utcnow()
    with open_store(ctx).connect() as conn:
        rows = list_schedules(conn)
    tick, problem = None, None
    redis_client = tick_client(ctx.settings.broker_url, timeout=timeout)
    if redis_client is None:
        problem = "beat records its tick only on a Redis broker; see the entries' last runs"
    else:
        import redis

        try:
            tick = read_tick(redis_client, ctx.settings.broker_global_keyprefix)
        except redis.RedisError as exc:
            raise click.ClickException(f"cannot reach the broker at {mask_url(ctx.settings.broker_url)}: "
                                       f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
                                       f"start it or set TASKMON_BROKER_URL") from None
        finally:
            redis_client.close()
    age = (now - tick["tick_at"]).total_seconds() if tick else None
    alive = age is not None and age <= beat_alive_within(ctx)
    if tick is None and problem is None:
        problem = "beat has not ticked in the last day (is it running with tasks.scheduler:DatabaseScheduler?)"
    elif tick is not None and not alive:
        problem = f"beat's last tick was {age:.0f}s ago (more than {beat_alive_within(ctx):g}s): it is not running"
    entries = [{"name": r["name"], "task": r["task"], "enabled": r["enabled"], "last_run_at": r["last_run_at"],
                "total_run_count": r["total_run_count"]} for r in rows]
    if as_json:
        _echo_json(ctx, {"alive": alive, "last_tick": tick, "tick_age_seconds": age, "problem": problem,
                         "entries": entries})
    else:
        tz = ctx.settings.tz
        if tick:
            click.echo(f"beat: {'alive' if alive else 'NOT TICKING'}, last tick {fmt_time(tick['tick_at'], tz)} "
                       f"({fmt_age(age)}) on {tick['hostname']} pid {tick['pid']}")
        if problem:
            click.echo(f"beat: {problem}")
        for e in entries:
            click.echo(f"  {e['name']:<30} {'on ' if e['enabled'] else 'off'}  last run {fmt_time(e['last_run_at'], tz)}"
                       f"  runs {e['total_run_count']}")
        click.echo(f"# times in {tz.key}")
    if not alive:
        sys.exit(1)
