"""`taskmon send`, `result`, `inspect`, `purge`, `ping` and `worker ACTION`: Celery managed from the broker side.

Thin: parse, call monitor.broker.control (the functions the REST API calls too), print.
"""
from __future__ import annotations

import contextlib
import json
import sys
from datetime import datetime, timezone

import click

from monitor.commands.base import Context, InputError, settings_options
from monitor.commands.render import to_json

timeout_option = click.option("--timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
                              help="Seconds to wait for the broker and the workers; nothing waits longer.")
json_flag = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@contextlib.contextmanager
def client(ctx: Context):
    """The client app on the configured broker and result backend; broker errors as one line."""
    from monitor.broker.calls import BadRequest, BrokerUnreachable
    from tasks.client import client_app

    prefix = ctx.settings.broker_global_keyprefix  # the app's Redis keys, pidbox included, carry it: ours must too
    app = client_app(ctx.settings.broker_url, ctx.settings.result_backend or None, name="taskmon-control",
                     task_send_sent_event=True,
                     **({"broker_transport_options": {"global_keyprefix": prefix}} if prefix else {}))
    try:
        yield app
    except BadRequest as exc:
        raise InputError(str(exc)) from None
    except BrokerUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        app.close()


def _json_value(option: str, text: str | None, kind: type):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{option}: not valid JSON ({exc.msg} at column {exc.colno}): {text}") from None
    if not isinstance(value, kind):
        what = "a JSON list, e.g. '[1, 2]'" if kind is list else "a JSON object, e.g. '{\"x\": 1}'"
        raise InputError(f"{option} must be {what}, not {type(value).__name__}")
    return value


def _eta(ctx: Context, text: str | None) -> datetime | None:
    if text is None:
        return None
    raw = text.strip()
    raw = raw[:-1] + "+00:00" if raw[-1:] in ("Z", "z") else raw
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise InputError(f"--eta: not an ISO 8601 time: {text!r} (e.g. 2026-12-24T08:00, in {ctx.settings.timezone})") \
            from None
    return (at if at.tzinfo else at.replace(tzinfo=ctx.settings.tz)).astimezone(timezone.utc)


def _echo_json(ctx: Context, value) -> None:
    click.echo(to_json(value, ctx.settings.tz))


def result_lines(result) -> list[str]:
    lines = [f"state: {result.state}"]
    if result.date_done:
        lines.append(f"done:  {result.date_done}")
    if result.exception:
        lines.append(f"exception: {result.exception}")
    elif result.state == "SUCCESS":
        lines.append(f"result: {json.dumps(result.result, default=repr, ensure_ascii=False)}")
    if result.traceback:
        lines.append(result.traceback.rstrip())
    return lines


# -- send / result ------------------------------------------------------------------------------

@click.command("send")
@settings_options
@click.argument("name")
@click.option("--args", "args_json", metavar="JSON", help="Positional arguments as a JSON list.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help="Keyword arguments as a JSON object.")
@click.option("--queue", metavar="Q", help="Queue to send it to (default: the broker's default route).")
@click.option("--countdown", type=click.FloatRange(min=0), metavar="S", help="Run no earlier than S seconds from now.")
@click.option("--eta", metavar="TIME", help="Run no earlier than TIME (ISO 8601, in the configured zone).")
@click.option("--expires", type=click.FloatRange(min=0), metavar="S", help="Discard it if not started within S seconds.")
@click.option("--priority", type=click.IntRange(0, 9), help="Message priority 0-9.")
@click.option("--wait", is_flag=True, help="Wait for the result (needs a result backend).")
@timeout_option
@json_flag
def send_cmd(ctx: Context, name, args_json, kwargs_json, queue, countdown, eta, expires, priority, wait, timeout,
             as_json) -> None:
    """Send task NAME by name and print its id (with --wait, its state and result).

    \b
    Example:
      taskmon send reports.generate_daily_report --kwargs '{"date": "2026-12-01"}' --queue reports
      taskmon send demo.add --args '[2, 3]' --wait --timeout 30
    """
    from monitor.broker.sending import send_task, wait_result

    args = _json_value("--args", args_json, list)
    kwargs = _json_value("--kwargs", kwargs_json, dict)
    if countdown is not None and eta is not None:
        raise InputError("give --countdown or --eta, not both")
    eta_at = _eta(ctx, eta)
    if wait and not ctx.settings.result_backend:  # said before sending, not after
        raise InputError("--wait reads the result from the result backend, and none is configured: "
                         "set TASKMON_RESULT_BACKEND")
    with client(ctx) as app:
        task_id = send_task(app, name, args, kwargs, queue=queue, countdown=countdown, eta=eta_at, expires=expires,
                            priority=priority, timeout=timeout)
        result = wait_result(app, task_id, timeout=timeout) if wait else None
    if as_json:
        _echo_json(ctx, {"task_id": task_id, "name": name, "queue": queue,
                         **({"result": result.as_dict()} if result else {})})
    else:
        click.echo(task_id)
        if result is not None:
            click.echo("\n".join(result_lines(result)))
    if result is not None and not result.ready:
        click.echo(f"not done within {timeout:g}s", err=True)
        sys.exit(1)
    if result is not None and result.state != "SUCCESS":
        sys.exit(1)


@click.command("result")
@settings_options
@click.argument("task_id")
@timeout_option
@json_flag
def result_cmd(ctx: Context, task_id, timeout, as_json) -> None:
    """State, result or exception and traceback of TASK_ID, from the result backend.

    Works for tasks the history never saw; PENDING means the backend knows nothing of it (yet).

    \b
    Example:
      taskmon result 3f2a1c9e-1d2b-4c55-9a1e-6f0d2b7c8e11 --json
    """
    from monitor.broker.sending import read_result

    with client(ctx) as app:
        result = read_result(app, task_id, timeout=timeout)
    if as_json:
        _echo_json(ctx, result.as_dict())
    else:
        click.echo(f"task:  {task_id}")
        click.echo("\n".join(result_lines(result)))


# -- inspect ------------------------------------------------------------------------------------

def _task_rows(tasks) -> list[tuple]:
    rows = []
    for t in tasks or ():
        request = t.get("request", t) if isinstance(t, dict) else {}
        eta = t.get("eta") if isinstance(t, dict) else None
        rows.append((request.get("id"), request.get("name"), request.get("args"), request.get("kwargs"),
                     eta or (request.get("delivery_info") or {}).get("routing_key")))
    return rows


def _reply_text(what: str, reply) -> str:
    from monitor.commands.render import table

    if what in ("active", "reserved", "scheduled"):
        rows = _task_rows(reply)
        if not rows:
            return "  (none)"
        last = "eta" if what == "scheduled" else "queue"
        return table(("id", "name", "args", "kwargs", last), [(i, n, str(a)[:40], str(k)[:40], x)
                                                               for i, n, a, k, x in rows])
    if what in ("registered", "revoked"):
        return "\n".join(f"  {item}" for item in reply) if reply else "  (none)"
    if what == "active-queues":
        return table(("queue", "exchange", "routing key"), [(q.get("name"), (q.get("exchange") or {}).get("name"),
                                                             q.get("routing_key")) for q in reply or ()])
    if what == "stats":
        pool = reply.get("pool") or {}
        lines = [f"  pid {reply.get('pid')}  uptime {reply.get('uptime')}s  prefetch {reply.get('prefetch_count')}",
                 f"  pool {pool.get('implementation', '-')}: max {pool.get('max-concurrency')}, "
                 f"processes {len(pool.get('processes') or [])}",
                 "  total: " + (", ".join(f"{k}={v}" for k, v in sorted((reply.get("total") or {}).items())) or "-")]
        return "\n".join(lines)
    return "\n".join(f"  {k} = {v!r}" for k, v in sorted(reply.items())) if isinstance(reply, dict) else f"  {reply}"


@click.command("inspect")
@settings_options
@click.argument("what", type=click.Choice(["active", "reserved", "scheduled", "registered", "stats", "revoked",
                                           "conf", "active-queues"]))
@click.option("--worker", "workers", multiple=True, metavar="NAME", help="Only this worker (repeatable); default: all.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds to wait for the workers' replies.")
@json_flag
def inspect_cmd(ctx: Context, what, workers, timeout, as_json) -> None:
    """Ask running workers what they run, hold, know or are configured with; a table per worker.

    Exit 1 when no worker answers, or a worker asked (by --worker, or answering ping) did not.

    \b
    Example:
      taskmon inspect active
      taskmon inspect stats --worker celery@web-1 --timeout 3 --json
    """
    from monitor.broker.control import inspect

    with client(ctx) as app:
        answer = inspect(app, what, list(workers) or None, timeout=timeout)
    if as_json:
        _echo_json(ctx, answer.as_dict())
    else:
        for host in sorted(answer.replies):
            click.echo(f"{host}:")
            click.echo(_reply_text(what, answer.replies[host]))
        if not answer.replies:
            click.echo(f"no worker answered within {timeout:g}s", err=True)
    if answer.missing:
        click.echo(f"no reply within {timeout:g}s from: {', '.join(answer.missing)}", err=True)
    if not answer.ok:
        sys.exit(1)


# -- purge --------------------------------------------------------------------------------------

@click.command("purge")
@settings_options
@click.argument("queues", nargs=-1, metavar="QUEUE...")
@click.option("--all", "all_queues", is_flag=True, help="Every queue a running worker consumes.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Purge a queue even though no running worker consumes it.")
@timeout_option
@json_flag
def purge_cmd(ctx: Context, queues, all_queues, yes, force, timeout, as_json) -> None:
    """Delete every message waiting in QUEUE... (or --all); how many each lost. Written to the audit log.

    On Redis all ten priority sub-queues of a queue are emptied too. A queue that no running worker
    consumes is refused (a typo would otherwise look like an empty queue) unless --force.

    \b
    Example:
      taskmon purge network_probes
      taskmon purge --all --yes --json
    """
    from monitor.broker.control import consumed_queues, purge
    from monitor.commands.base import open_store, utcnow
    from storage.audit import record
    from tasks.redact import mask_url

    if bool(queues) == all_queues:
        raise InputError("name the queues to purge, or give --all (not both)")
    engine = open_store(ctx)  # the audit log must be writable before anything is deleted
    with client(ctx) as app:
        consumed = consumed_queues(app, timeout=min(timeout, 2.0)) if (all_queues or not force) else {}
        names = sorted(consumed) if all_queues else sorted(set(queues))
        if all_queues and not names:
            raise click.ClickException(f"no running worker answered within {min(timeout, 2.0):g}s, so --all names "
                                       f"no queue; name the queues instead")
        unknown = [q for q in names if q not in consumed]
        if unknown and not force:
            raise InputError(f"no running worker consumes {', '.join(unknown)} (consumed: "
                             f"{', '.join(sorted(consumed)) or 'none answered'}); check the name, or add --force")
        if not yes:
            click.confirm(f"Delete every waiting message in {', '.join(names)}?", abort=True, err=True)
        counts = purge(app, names, timeout=timeout)
    with engine.begin() as conn:
        record(conn, utcnow(), "purge", target=",".join(names),
               detail={"broker": mask_url(ctx.settings.broker_url), "forced": force,
                       "messages": {c.queue: c.messages for c in counts}})
    engine.dispose()
    if as_json:
        _echo_json(ctx, [c.as_dict() for c in counts])
        return
    for c in counts:
        extra = ""
        if c.by_priority and set(c.by_priority) != {"0"}:
            extra = "  (by priority: " + ", ".join(f"{p}: {n}" for p, n in sorted(c.by_priority.items())) + ")"
        if c.exists is False:
            extra = "  (no such queue on the broker)"
        click.echo(f"{c.queue}: {c.messages} message{'s' if c.messages != 1 else ''} deleted{extra}")


# -- ping ---------------------------------------------------------------------------------------

@click.command("ping")
@settings_options
@click.option("--queue", metavar="Q", help="Queue to send the round-trip task to (default: the task's route).")
@click.option("--task", "task_name", default="maintenance.health_check", show_default=True,
              help="Task to run there and back (taskmon's own health check, or any task that takes no arguments).")
@timeout_option
@json_flag
def ping_cmd(ctx: Context, queue, task_name, timeout, as_json) -> None:
    """Test the connection: broker reachable, workers answering ping, and a real task's round trip.

    Exit 0 when all three work, 1 (with the reason) otherwise. The round trip reads the task's
    result, so it needs the result backend (TASKMON_RESULT_BACKEND).

    \b
    Example:
      taskmon ping
      taskmon ping --queue high_priority --timeout 10 --json
    """
    from monitor.broker.sending import ping

    with client(ctx) as app:
        report = ping(app, queue, timeout=timeout, task=task_name)
    if as_json:
        _echo_json(ctx, report.as_dict())
    else:
        if report.broker_ok:  # else the one FAILED line below says which broker and why
            click.echo(f"broker:  {report.broker}  ok")
            click.echo(f"workers: {len(report.workers)} answering" + (f" ({', '.join(report.workers)})"
                                                                     if report.workers else ""))
        if report.task_id:
            latency = f"{report.latency_seconds * 1000:.0f} ms" if report.latency_seconds is not None else "-"
            click.echo(f"task:    {report.task} -> {report.queue or 'default queue'}: {report.task_state}, "
                       f"round trip {latency}")
        click.echo("ok" if report.ok else f"FAILED: {report.reason}")
    if not report.ok:
        sys.exit(1)


# -- worker control -----------------------------------------------------------------------------

@click.group("worker")
def worker_group() -> None:
    """Control running workers: pool size, consumers, rate and time limits, shutdown, pool restart.

    \b
    Example:
      taskmon worker pool-grow 2 --worker celery@web-1
      taskmon worker rate-limit billing.send_bill_reminders 10/m --yes
    """


def _control_command(action: str, help_text: str, example: str, params: list, to_arguments):
    """A `taskmon worker ACTION` command: its own arguments, then --worker/--yes/--timeout/--json."""

    def run(ctx: Context, workers, yes, timeout, as_json, **values):
        from monitor.broker.control import control

        arguments = to_arguments(**values)
        if not workers and not yes:
            click.confirm(f"Send {action} to every worker?", abort=True, err=True)
        with client(ctx) as app:
            answer = control(app, action, list(workers) or None, timeout=timeout, **arguments)
        if as_json:
            _echo_json(ctx, answer.as_dict())
        else:
            for host in sorted(answer.replies):
                reply = answer.replies[host]
                text = reply.get("ok") or reply.get("error") if isinstance(reply, dict) else reply
                click.echo(f"{host}: {'error: ' if isinstance(reply, dict) and 'error' in reply else ''}{text}")
            if not answer.replies:
                click.echo(f"no worker answered within {timeout:g}s", err=True)
        if answer.missing:
            click.echo(f"no reply within {timeout:g}s from: {', '.join(answer.missing)}", err=True)
        errors = [h for h, r in answer.replies.items() if isinstance(r, dict) and "error" in r]
        if not answer.ok or errors:
            sys.exit(1)

    run.__doc__ = f"{help_text}\n\n\b\nExample:\n  {example}\n"
    command = run
    for decorator in reversed([
        click.option("--worker", "workers", multiple=True, metavar="NAME", help="Only this worker (repeatable); default: all."),
        click.option("--yes", "-y", is_flag=True, help="Send to every worker without asking."),
        click.option("--timeout", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
                     help="Seconds to wait for the replies."),
        json_flag,
    ]):
        command = decorator(command)
    for param in reversed(params):
        command = param(command)
    command = settings_options(command)
    worker_group.add_command(click.command(action)(command))


_n = click.argument("n", type=click.IntRange(min=1), default=1, required=False)
_queue = click.argument("queue")
_task = click.argument("task_name", metavar="TASK")
_control_command("pool-grow", "Add N processes to each worker's pool (default 1).", "taskmon worker pool-grow 2",
                 [_n], lambda n: {"n": n})
_control_command("pool-shrink", "Remove N processes from each worker's pool (default 1).",
                 "taskmon worker pool-shrink 1 --worker celery@web-1", [_n], lambda n: {"n": n})
_control_command("autoscale", "Set the autoscaler's bounds (workers started with --autoscale).",
                 "taskmon worker autoscale 10 2",
                 [click.argument("max_", metavar="MAX", type=click.IntRange(min=1)),
                  click.argument("min_", metavar="MIN", type=click.IntRange(min=0))],
                 lambda max_, min_: {"max": max_, "min": min_})
_control_command("add-consumer", "Start consuming QUEUE.", "taskmon worker add-consumer reports --worker celery@web-1",
                 [_queue], lambda queue: {"queue": queue})
_control_command("cancel-consumer", "Stop consuming QUEUE.", "taskmon worker cancel-consumer reports",
                 [_queue], lambda queue: {"queue": queue})
_control_command("rate-limit", "Limit how often TASK starts, per worker process: 10/s, 100/m, 1000/h (0: no limit).",
                 "taskmon worker rate-limit billing.send_bill_reminders 10/m",
                 [_task, click.argument("rate")], lambda task_name, rate: {"task_name": task_name, "rate_limit": rate})
_control_command("time-limit", "Set TASK's soft and hard time limits in seconds.",
                 "taskmon worker time-limit reports.generate_daily_report --soft 60 --hard 120",
                 [_task, click.option("--soft", type=click.FloatRange(min=0), help="Soft limit (seconds)."),
                  click.option("--hard", type=click.FloatRange(min=0), help="Hard limit (seconds).")],
                 lambda task_name, soft, hard: {"task_name": task_name, "soft": soft, "hard": hard})
_control_command("shutdown", "Warm shutdown: each worker finishes its running tasks and exits (no reply).",
                 "taskmon worker shutdown --worker celery@web-1", [], lambda: {})
_control_command("pool-restart", "Restart the pool's processes (workers need Celery's worker_pool_restarts on; "
                 "taskmon's own workers: TASKMON_WORKER_POOL_RESTARTS=true). A busy process is replaced after its "
                 "task, an idle one when it takes its next.",
                 "taskmon worker pool-restart --module tasks.billing --reload",
                 [click.option("--module", "modules", multiple=True, help="Module to import again (repeatable)."),
                  click.option("--reload", "reload_", is_flag=True, help="Reload modules already imported.")],
                 lambda modules, reload_: {"modules": list(modules) or None, "reload": reload_ or None})


COMMANDS = (send_cmd, result_cmd, inspect_cmd, purge_cmd, ping_cmd, worker_group)
