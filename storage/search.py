"""Text search in the history and the opaque cursor of keyset pagination.

A search text matches a run whose task id starts with it, or whose name, args, kwargs, result or
exception contains it (case-sensitive, like the name globs). Both databases take their candidates
from a search index `taskmon serve` keeps outside the writer (PostgreSQL: storage.pg_search_index, a
pg_trgm GIN index; SQLite, after the newest runs: storage.search_index, an FTS5 trigram table), or
without one scan. Either way the rows are the same.
"""
from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from storage.sql import bind, to_utc

SEARCHED = ("name", "args", "kwargs", "result", "exception")
MAX_SEARCH = 500  # characters; longer texts are refused by the callers' validation
# What PostgreSQL's search index holds of a run (storage.pg_search_index).
PG_SEARCH_TEXT = ("(COALESCE(task_id, '') || E'\\n' || COALESCE(name, '') || E'\\n' || COALESCE(args, '') || E'\\n' "
                  "|| COALESCE(kwargs, '') || E'\\n' || COALESCE(result, '') || E'\\n' || COALESCE(exception, ''))")

# sort name -> (column, decode of the cursor's key)
SORTS = {"seen": "seen_at", "started": "started_at", "runtime": "runtime"}


class BadCursor(ValueError):
    """A cursor that this query did not hand out (or handed out for another sort)."""


def like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_condition(conn_dialect: str, text: str, key: str) -> tuple[str, dict[str, Any]]:
    """The SQL condition "this run matches the search text", with its parameters."""
    params: dict[str, Any] = {f"{key}_q": text, f"{key}_n": len(text)}
    prefix = f"substr(task_id, 1, :{key}_n) = :{key}_q"
    if conn_dialect == "sqlite":
        # The primary key's BINARY order makes the prefix a range; the upper bound is the text with
        # its last character bumped.
        params[f"{key}_hi"] = text[:-1] + chr(min(ord(text[-1]) + 1, 0x10FFFF))
        id_range = f"task_id >= :{key}_q AND task_id < :{key}_hi AND {prefix}"
        contains = " OR ".join(f"instr({c}, :{key}_q) > 0" for c in SEARCHED)
        return f"(({id_range}) OR {contains})", params
    contains = " OR ".join(f"strpos({c}, :{key}_q) > 0" for c in SEARCHED)
    # The candidates come from storage.pg_search_index (storage.history) or a scan.
    return f"({prefix} OR {contains})", params


def encode_cursor(sort: str, row: dict[str, Any]) -> str:
    """The cursor after ``row``: its sort key and task id, opaque to the caller."""
    value = row[SORTS[sort]]
    if isinstance(value, datetime):
        value = value.isoformat()
    raw = json.dumps([sort, value, row["task_id"]], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(conn_dialect: str, sort: str, cursor: str) -> tuple[Any, str]:
    """(bound sort key, task id) of a cursor handed out by encode_cursor for the same sort."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        got_sort, value, task_id = json.loads(raw)
        if got_sort != sort or not isinstance(task_id, str):
            raise ValueError
        if sort == "runtime":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError
            return float(value), task_id
        return bind(conn_dialect, to_utc(datetime.fromisoformat(value))), task_id
    except (ValueError, TypeError, UnicodeDecodeError):
        raise BadCursor(f"cursor {cursor[:40]!r} was not handed out by this listing sorted by {sort}; "
                        "start again without a cursor") from None


# PostgreSQL's search index (storage.pg_search_index): made by hand in the migrations, not from storage.schema.
PG_SEARCH_TABLES = ("run_search", "run_search_mark")


def in_metadata(obj, name, type_, reflected, compare_to) -> bool:
    """Alembic's include_object: PostgreSQL's search tables are made by hand in the migrations, not
    from storage.schema, so comparing the schema with a database leaves them out."""
    if type_ == "table" and name in PG_SEARCH_TABLES:
        return False
    if type_ in ("index", "column", "foreign_key_constraint") and getattr(getattr(obj, "table", None), "name", None) \
            in PG_SEARCH_TABLES:
        return False
    return True
