"""Query parameters shared by the routers: the CLI's filters and time syntax."""
from __future__ import annotations

from datetime import datetime, timezone

from fastapi import Query, Request

from monitor.commands.timespec import HINT, parse_timespec
from monitor.http.problems import bad_request

TIME_HELP = f"ISO 8601 in the configured zone, or an age back from now; {HINT}"


def resolve(request: Request, name: str, text: str | None, now: datetime | None = None) -> datetime | None:
    """A since/until parameter as UTC; 400 when it is neither ISO 8601 nor an age."""
    if text is None:
        return None
    try:
        spec = parse_timespec(text)
        return spec.resolve(request.app.state.settings.tz, now or datetime.now(timezone.utc))
    except (ValueError, OverflowError) as exc:
        raise bad_request(f"{name}: {exc}") from None


# The two forms a time may take, for the OpenAPI document only: resolve() checks and says why a value is bad.
TIME_PATTERN = r"^\s*(\d+(\.\d+)?\s*[smhdw]|\d{4}-\d{2}-\d{2}([T ][0-9:.]+([Zz]|[+-]\d{2}:?\d{2})?)?)\s*$"


def since_query(description: str = "First seen at or after. " + TIME_HELP):
    return Query(None, description=description, examples=["24h"], max_length=64,
                 json_schema_extra={"pattern": TIME_PATTERN})


def until_query(description: str = "First seen before. " + TIME_HELP):
    return Query(None, description=description, max_length=64, json_schema_extra={"pattern": TIME_PATTERN})
