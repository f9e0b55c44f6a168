"""Points in time as people type them: ISO 8601 (``2026-11-23T14:00``) or an age (``15m``, ``2h``, ``7d``).

A naive ISO time is read in the configured time zone; the result is always timezone-aware UTC.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo

UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
HINT = "use ISO 8601 (2026-11-23, 2026-11-23T14:00, 2026-11-23T06:00Z) or an age such as 30s, 15m, 2h, 7d, 1w"


@dataclass(frozen=True)
class TimeSpec:
    """What the user typed, validated; ``resolve`` turns it into UTC once the zone and clock are known."""

    text: str
    age: timedelta | None = None
    at: datetime | None = None  # naive: in the configured zone

    def resolve(self, tz: tzinfo, now: datetime) -> datetime:
        if self.age is not None:
            return now.astimezone(timezone.utc) - self.age
        at = self.at if self.at.tzinfo is not None else self.at.replace(tzinfo=tz)
        return at.astimezone(timezone.utc)


def parse_timespec(text: str) -> TimeSpec:
    """Validate a --since/--until value; ValueError with a one-line reason when it is neither form."""
    match = _AGE.match(text)
    if match:
        return TimeSpec(text, age=timedelta(**{UNITS[match.group(2)]: float(match.group(1))}))
    raw = text.strip()
    if raw[-1:] in ("Z", "z"):  # Python 3.10's fromisoformat does not know the Z suffix
        raw = raw[:-1] + "+00:00"
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(f"{text!r} is not a time: {HINT}") from None
    return TimeSpec(text, at=at)


def resolve_time(text: str, tz: tzinfo, now: datetime) -> datetime:
    """Parse and resolve in one step (for callers outside the CLI)."""
    return parse_timespec(text).resolve(tz, now)
