"""The dashboard's task search: the history filter plus field qualifiers and free text, in keyset pages.

``terms`` maps a field (args, kwargs, result, exception) to a text it must contain; ``text`` must
appear in the task id (as a prefix), the name, args, kwargs, result or exception. Pages are
keyset ones: the cursor is the last row's (sort value, task_id), so page 1,000 costs what page 1 does.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

from storage.history import DECODE, SUMMARY, RunFilter, conditions
from storage.sql import bind, dialect, fetch, to_utc

SEARCH_FIELDS = ("args", "kwargs", "result", "exception")
SORTS = {"seen": "seen_at", "started": "started_at", "runtime": "runtime"}
TIME_SORTS = {"seen_at", "started_at"}


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_runs(conn, f: RunFilter, *, terms: Mapping[str, str] | None = None, text: str | None = None,
                sort: str = "seen", after: tuple[Any, str] | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Runs matching ``f``, ``terms`` and ``text``, largest ``sort`` value first, after the cursor ``after``.

    Sorting by started or runtime leaves out the runs that have none yet (queued, never started).
    """
    db = dialect(conn)
    column = SORTS[sort]
    cond, params = conditions(db, f)
    parts = [cond]
    for i, (field, value) in enumerate(sorted((terms or {}).items())):
        if field not in SEARCH_FIELDS:
            raise ValueError(f"cannot search {field!r}; use one of {', '.join(SEARCH_FIELDS)}")
        parts.append(f"{field} LIKE :t{i} ESCAPE '\\'")
        params[f"t{i}"] = _like(value)
    if text:
        fields = " OR ".join(f"{c} LIKE :text ESCAPE '\\'" for c in ("name", *SEARCH_FIELDS))
        parts.append(f"(task_id LIKE :text_prefix ESCAPE '\\' OR {fields})")
        params["text"] = _like(text)
        params["text_prefix"] = _like(text)[1:]
    if column != "seen_at":
        parts.append(f"{column} IS NOT NULL")
    if after is not None:
        value, task_id = after
        if column in TIME_SORTS:
            value = bind(db, value)
        parts.append(f"({column} < :after_v OR ({column} = :after_v AND task_id < :after_id))")
        params.update(after_v=value, after_id=task_id)
    sql = (f"SELECT {SUMMARY} FROM task_runs WHERE {' AND '.join(parts)} "
           f"ORDER BY {column} DESC, task_id DESC LIMIT :limit")
    return fetch(conn, sql, {**params, "limit": limit}, DECODE)


def cursor_of(row: Mapping[str, Any], sort: str) -> str:
    """The cursor after ``row``: its sort value and task id, as text for a URL."""
    value = row[SORTS[sort]]
    text = value.isoformat() if isinstance(value, datetime) else repr(float(value))
    return f"{text}~{row['task_id']}"


def parse_cursor(cursor: str, sort: str) -> tuple[Any, str]:
    """The (sort value, task_id) of a cursor; ValueError when it is not one this sort made."""
    value, sep, task_id = cursor.partition("~")
    if not sep or not task_id:
        raise ValueError("not a cursor of this listing")
    if SORTS[sort] in TIME_SORTS:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise ValueError("not a cursor of this listing")
        return to_utc(parsed), task_id
    return float(value), task_id
