"""``--since`` values: an ISO 8601 time or date, or a span back from now (``30s``, ``15m``, ``2h``, ``7d``, ``2w``).

A time without an offset is read in the configured time zone; the result is always UTC.
"""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


class TimeParseError(ValueError):
    """Not a time taskmon understands; the message says what it accepts."""


def parse_since(text: str, now: datetime, tz: tzinfo = timezone.utc) -> datetime:
    span = _SPAN.match(text)
    if span:
        return now - timedelta(seconds=float(span.group(1)) * UNITS[span.group(2)])
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"  # Python 3.10's fromisoformat has no Z
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise TimeParseError(f"cannot read {text!r} as a time: use ISO 8601 (2026-11-23, 2026-11-23T14:00, "
                             f"2026-11-23T06:00Z) or a span back from now (30s, 15m, 2h, 7d, 2w)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(timezone.utc)
