"""`taskmon alerts` and `alerts test`."""
from __future__ import annotations

import click

from monitor.commands.base import Context, json_option, open_store, settings_options, time_option, utcnow
from monitor.commands.render import fmt_time, one_line, table as render_table


ALERT_COLUMNS = ("created", "id", "kind", "rule", "status", "tries", "subject", "error")


@click.group("alerts", invoke_without_command=True)
@settings_options
@time_option("--since", "Alerts recorded at or after: ISO 8601 or an age (15m, 2h, 7d).")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1), help="Most rows shown.")
@json_option
@click.pass_context
def alerts_group(click_ctx, ctx: Context, since, limit, as_json) -> None:
    """Alert history, newest first, with delivery status (pending, sending, sent, failed)."""
    if click_ctx.invoked_subcommand is not None:
        click_ctx.obj = ctx  # `alerts --config F test`: the subcommand uses these settings
        return
    from monitor.commands.render import to_json
    from storage.alerts import list_alerts

    since_at = since.resolve(ctx.settings.tz, utcnow()) if since else None
    with open_store(ctx).connect() as conn:
        rows = list_alerts(conn, since=since_at, limit=limit)
    if as_json:
        click.echo(to_json(rows, ctx.settings.tz))
        return
    if not rows:
        click.echo("no alerts" + (" since then" if since else " yet"))
        return
    table = [(fmt_time(r["created_at"], ctx.settings.tz), r["id"], r["kind"], r["rule"], r["status"], r["attempts"],
              one_line(r["subject"], 90), one_line(r["last_error"], 90)) for r in rows]
    click.echo(render_table([c.upper() for c in ALERT_COLUMNS], table, rule=False))
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


COMMANDS = (alerts_group,)
