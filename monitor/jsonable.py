"""Query results as JSON types, shared by the CLI's --json output and the HTTP API's answers."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import Any, Callable

UTC = timezone.utc
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/Universal", "Universal", "Zulu", "Etc/Zulu"})


def jsonable(value: Any, tz: tzinfo, text: Callable[[str], str] | None = None, native_times: bool = False) -> Any:
    """``value`` as JSON types: times ISO 8601 in ``tz`` (with its offset), Decimals as floats, bytes as
    UTF-8 text; ``text`` (when given) is applied to every string, e.g. to mask passwords in URLs.

    ``native_times``: times stay datetimes, in ``tz``, for orjson, which writes the same ISO 8601
    text as isoformat() in C (a page of runs holds hundreds of times). An offset with seconds (a
    zone's local mean time before 1900) is written as text, since orjson rounds it to minutes.
    """
    return _Converter(tz, text, native_times).convert(value)


class _Converter:
    def __init__(self, tz: tzinfo, text: Callable[[str], str] | None, native_times: bool):
        self.tz = tz
        self.text = text
        self.native_times = native_times
        self.tz_is_utc = tz is UTC or getattr(tz, "key", None) in _UTC_NAMES

    def convert(self, value: Any) -> Any:
        # type() first: a history page is hundreds of plain str/int/None values, and one identity
        # test each is much of the time an answer of the API spends outside SQL.
        kind = type(value)
        if kind is str:
            return value if self.text is None else self.text(value)
        if value is None or kind is int or kind is float or kind is bool:
            return value
        if kind is dict:
            convert = self.convert
            return {k if type(k) is str else str(k): convert(v) for k, v in value.items()}
        if kind is list or kind is tuple:
            return [self.convert(v) for v in value]
        if kind is datetime:
            return self.time(value)
        return self.other(value)

    def time(self, value: datetime) -> Any:
        if self.native_times:
            if value.tzinfo is UTC and self.tz_is_utc:
                return value
            local = value.astimezone(self.tz)
            offset = local.utcoffset()
            if offset is not None and offset % timedelta(minutes=1) == timedelta(0):
                return local
            return local.isoformat()
        return value.astimezone(self.tz).isoformat()

    def other(self, value: Any) -> Any:
        """The rarer types, and subclasses of the common ones."""
        if isinstance(value, str):
            return str(value) if self.text is None else self.text(value)
        if isinstance(value, dict):
            return {str(k): self.convert(v) for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.convert(v) for v in value]
        if isinstance(value, datetime):
            return self.time(value)
        if isinstance(value, date):
            return value.isoformat()
        if isinstance(value, Decimal):
            return float(value)
        if isinstance(value, bytes):
            return self.convert(value.decode("utf-8", "replace"))
        return value
