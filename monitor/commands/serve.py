"""`taskmon serve` (the HTTP API) and `taskmon token create|list|revoke`."""
from __future__ import annotations

import json

import click

from monitor.commands.base import Context, SettingsUsageError, json_option, open_store, settings_options, utcnow
from tasks.settings import SettingsError


@click.command("serve")
@settings_options
@click.option("--host", "http_host", metavar="ADDRESS",
              help="Address to listen on (http_host, env TASKMON_HTTP_HOST; default 127.0.0.1); 0.0.0.0 for every "
                   "interface.")
@click.option("--port", "http_port", type=click.IntRange(0, 65535),
              help="Port to listen on (http_port, env TASKMON_HTTP_PORT; default 5555, Flower's).")
@click.option("--workers", "http_workers", type=click.IntRange(0, 64),
              help="Server processes (http_workers, env TASKMON_HTTP_WORKERS; default 0: one per CPU, at most 4).")
@click.option("--insecure-no-auth", is_flag=True,
              help="Serve without tokens: anyone who can reach the port is admin. For a laptop only.")
@click.option("--bad-token-limit", "bad_token_limit", metavar="RATE",
              help="Bad tokens one address may send before it gets 429s (bad_token_limit, env "
                   "TASKMON_BAD_TOKEN_LIMIT; default 20/minute).")
def serve_cmd(ctx: Context, insecure_no_auth: bool, **flags) -> None:
    """Serve the REST API (/api/v1, OpenAPI at /api/v1/openapi.json, docs at /api/v1/docs) and the dashboard (/)."""
    from monitor.http.server import ServeError, serve

    try:
        ctx = Context(ctx.loaded.with_flags(flags))
    except SettingsError as exc:
        raise SettingsUsageError(str(exc)) from None
    try:
        serve(ctx.settings, open_store(ctx), insecure_no_auth=insecure_no_auth, echo=click.echo)
    except ServeError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("token")
def token_group() -> None:
    """Bearer tokens of the HTTP API: viewer reads; operator also sends, revokes, replays, edits the schedule;
    admin also controls workers, purges queues and manages tokens."""


@token_group.command("create")
@settings_options
@click.option("--name", required=True, help="Who holds the token (shown in the audit log).")
@click.option("--role", required=True, type=click.Choice(("viewer", "operator", "admin")), help="What it may do.")
def token_create(ctx: Context, name: str, role: str) -> None:
    """Create a token and print it once (only its hash is stored)."""
    from storage.tokens import TokenError, create_token

    with open_store(ctx).begin() as conn:
        try:
            token = create_token(conn, utcnow(), name, role)
        except TokenError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(token)
    click.echo(f"token {name!r} ({role}) created; it is shown only this once", err=True)


@token_group.command("list")
@settings_options
@json_option
def token_list(ctx: Context, as_json: bool) -> None:
    """The tokens: name, role, created, revoked (never the tokens themselves)."""
    from monitor.commands.render import fmt_time, jsonable, table
    from storage.tokens import list_tokens

    with open_store(ctx).connect() as conn:
        rows = list_tokens(conn)
    tz = ctx.settings.tz
    if as_json:
        click.echo(json.dumps(jsonable(rows, tz), indent=2))
    elif rows:
        click.echo(table(("name", "role", "created", "revoked"),
                         [(r["name"], r["role"], fmt_time(r["created_at"], tz), fmt_time(r["revoked_at"], tz))
                          for r in rows]))
    else:
        click.echo("no tokens: `taskmon token create --name NAME --role viewer|operator|admin`")


@token_group.command("revoke")
@settings_options
@click.argument("name")
def token_revoke(ctx: Context, name: str) -> None:
    """Revoke the token NAME: refused from the next request on."""
    from storage.tokens import TokenError, revoke_token

    with open_store(ctx).begin() as conn:
        try:
            revoke_token(conn, utcnow(), name)
        except TokenError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"token {name!r} revoked")


COMMANDS = (serve_cmd, token_group)
