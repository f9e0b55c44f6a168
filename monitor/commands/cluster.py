"""`taskmon daemons`: every daemon on this history, its role and how it is doing."""
from __future__ import annotations

import click

from monitor.commands.base import Context, json_option, open_store, settings_options, utcnow


def daemon_rows(rows: list[dict], now, stale_seconds: float) -> list[dict]:
    """Status rows -> what the command shows: state (alive, stale, stopped), role, rates, heartbeat age."""
    from monitor.health import is_alive

    out = []
    for row in rows:
        counters = row["counters"]
        state = "stopped" if row["stopped_at"] else "alive" if is_alive(row, now, stale_seconds) else "stale"
        out.append({"daemon_id": row["daemon_id"], "hostname": row["hostname"], "pid": row["pid"],
                    "role": (row.get("role") or "-") if state == "alive" else "-", "state": state,
                    "sources": row["sources"], "events_per_second": counters.get("events_per_second"),
                    "rows_written": counters.get("rows_written", 0),
                    "heartbeat_age": round((now - row["heartbeat_at"]).total_seconds(), 1),
                    "started_at": row["started_at"], "stopped_at": row["stopped_at"]})
    return out


@click.command("daemons")
@settings_options
@json_option
@click.option("--all", "show_all", is_flag=True, help="Also daemons stopped or silent for over a day.")
def daemons_cmd(ctx: Context, as_json: bool, show_all: bool) -> None:
    """Every daemon writing this history: id, host, role (leader or follower), sources, rates, heartbeat age."""
    from monitor.commands.render import fmt_duration, table, to_json
    from storage.cluster import all_status

    now = utcnow()
    with open_store(ctx).connect() as conn:
        rows = daemon_rows(all_status(conn), now, ctx.settings.heartbeat_stale_seconds)
    if not show_all:
        rows = [r for r in rows if r["heartbeat_age"] < 86400]
    if as_json:
        click.echo(to_json(rows, ctx.settings.tz))
        return
    if not rows:
        click.echo("no taskmon daemon has run against this database")
        return
    click.echo(table(["DAEMON", "HOST", "PID", "STATE", "ROLE", "SOURCES", "EVENTS/S", "ROWS", "HEARTBEAT"],
                     [[r["daemon_id"], r["hostname"], r["pid"], r["state"], r["role"], r["sources"],
                       r["events_per_second"], r["rows_written"], f"{fmt_duration(r['heartbeat_age'])} ago"]
                      for r in rows], right=(2, 6, 7)))


COMMANDS = (daemons_cmd,)
