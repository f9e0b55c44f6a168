"""click option types and errors for taskmon's commands (kept out of cli.py so that it stays thin)."""
from __future__ import annotations

import click

from monitor.commands.timespec import TimeSpec, parse_timespec


class OneLineBadParameter(click.BadParameter):
    """A bad option value shown as one line (``Error: Invalid value for '--since': ...``), exit code 2."""

    def show(self, file=None) -> None:
        click.echo(f"Error: {self.format_message()}", file=file, err=file is None)


class TimeParam(click.ParamType):
    """A click option type for --since/--until; gives a TimeSpec to resolve in the configured zone."""

    name = "time"

    def convert(self, value, param, ctx):
        if isinstance(value, TimeSpec):
            return value
        try:
            return parse_timespec(str(value))
        except ValueError as exc:
            raise OneLineBadParameter(str(exc), ctx=ctx, param=param) from None
