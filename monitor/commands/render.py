"""Turning query results into text for people (tables, durations, local times) and for machines (JSON, CSV)."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, tzinfo
from typing import Any, Iterable, Sequence

from monitor.jsonable import jsonable  # noqa: F401 - the commands' --json output uses it from here

NONE = "-"


def fmt_time(value: datetime | None, tz: tzinfo) -> str:
    """A stored UTC time as wall-clock time in the configured zone, to the second."""
    if value is None:
        return NONE
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(seconds: float | None) -> str:
    """850ms, 12.3s, 4m05s, 2h03m, 3d04h."""
    if seconds is None:
        return NONE
    if seconds < 0:
        return "-" + fmt_duration(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def fmt_age(seconds: float | None) -> str:
    return NONE if seconds is None else f"{fmt_duration(seconds)} ago"


def fmt_rate(rate: float | None) -> str:
    return NONE if rate is None else f"{rate * 100:.1f}%"


def fmt_number(value: float | None, digits: int = 2) -> str:
    return NONE if value is None else f"{value:.{digits}f}"


def one_line(text: str | None, width: int) -> str:
    """The first line of a text, cut to ``width`` characters with an ellipsis."""
    if not text:
        return NONE
    first = text.strip().splitlines()[0] if text.strip() else NONE
    return first if len(first) <= width else first[: width - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = (), rule: bool = True) -> str:
    """A plain-text table: a header, a rule (unless ``rule`` is False), one line per row; columns
    in ``right`` are right-aligned."""
    rows = [[NONE if v is None else str(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    right = set(right)

    def line(cells):
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *([line(["-" * w for w in widths])] if rule else []), *[line(r) for r in rows]])


def to_json(value: Any, tz: tzinfo) -> str:
    return json.dumps(jsonable(value, tz), indent=2, ensure_ascii=False)


def to_csv(rows: Iterable[dict[str, Any]], fields: Sequence[str], tz: tzinfo) -> str:
    """CSV with a header line; times ISO 8601 in the configured zone, empty cells for NULL."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for row in rows:
        cells = jsonable({k: row.get(k) for k in fields}, tz)
        writer.writerow(["" if cells[k] is None else cells[k] for k in fields])
    return buf.getvalue()
