"""Reading the task history: filtered listings, one run with its workflow, rows changed since a time.

Every function takes a Connection, SQLAlchemy's or a plain sqlite3 one (storage.sql), and returns
plain dicts with fixed keys. The SQL is text so that `taskmon history` and `show` need no
SQLAlchemy import; it is the SQL SQLAlchemy compiled from the schema before, and
tests/test_history_queries.py checks both connections give the same rows.
"""
from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from storage.merge import CELERY_STATES, TASKMON_STATES
from storage import pg_search_index, search_index
from storage.search import SORTS, BadCursor, decode_cursor, encode_cursor, search_condition
from storage.sql import bind, dialect, fetch, sqlite_driver, to_bool, to_utc

__all__ = ["BadCursor", "SORTS"]  # re-exported: callers of list_runs catch and offer these

# Keys of a run in listings (history, tail, show's parent/children), in display order.
SUMMARY_FIELDS = (
    "task_id", "name", "state", "worker", "queue", "seen_at", "started_at", "finished_at",
    "runtime", "queue_wait", "retries", "exception_type", "exception", "updated_at",
)
# Every column of task_runs in the schema's order (storage.schema; tests/test_history_queries.py checks).
RUN_FIELDS = (
    "task_id", "name", "state", "state_at", "args", "kwargs", "result", "exception", "exception_type", "traceback",
    "queue", "routing_key", "exchange", "worker", "root_id", "parent_id", "retries", "eta", "expires", "seen_at",
    "sent_at", "received_at", "started_at", "finished_at", "runtime", "queue_wait", "truncated", "updated_at",
    "received_attempt", "received_first_at", "redelivered", "stuck_at", "replay_of",
)
TIME_FIELDS = ("state_at", "eta", "expires", "seen_at", "sent_at", "received_at", "started_at", "finished_at",
               "updated_at", "received_first_at", "stuck_at")
BOOL_FIELDS = ("truncated", "redelivered")
DECODE = {**{k: to_utc for k in TIME_FIELDS}, **{k: to_bool for k in BOOL_FIELDS}}
# Keys of the timeline entries of `show`.
TIMELINE_EVENTS = (("sent", "sent_at"), ("received", "received_at"), ("started", "started_at"), ("finished", "finished_at"))
CONTAINS_COLUMNS = ("args", "kwargs", "result", "exception")  # RunFilter.contains may look inside these
MAX_CHAIN = 100  # parent links followed at most (a cycle in bad data must not hang `show`)
MAX_CHILDREN = 1000
MAX_PARTS = 32  # list_runs merges at most this many per-(name, state) queries
SEARCH_WINDOW = 5000  # SQLite: runs a search reads newest first before it scans the whole table
SUMMARY = ", ".join(SUMMARY_FIELDS)
NEWEST_FIRST = "ORDER BY seen_at DESC, task_id DESC"


@dataclass(frozen=True)
class RunFilter:
    """What `history`, `tail` and `stats` narrow the runs to; None/empty means no condition."""

    name: str | None = None  # a glob: * ? [...]
    states: tuple[str, ...] = ()
    worker: str | None = None
    queue: str | None = None
    since: datetime | None = None  # seen_at >= since
    until: datetime | None = None  # seen_at < until
    failed: bool = False  # short for states=("FAILURE",), added to any states given
    search: str | None = None  # task id prefix, or text in name, args, kwargs, result, exception (storage.search)
    # (column, text): the column contains the text, e.g. (("args", "42"),): the dashboard's args:/kwargs:/... qualifiers
    contains: tuple[tuple[str, str], ...] = ()

    def all_states(self) -> tuple[str, ...]:
        states = tuple(s.upper() for s in self.states)
        if self.failed and "FAILURE" not in states:
            states += ("FAILURE",)
        return states


class UnknownState(ValueError):
    """A state filter names a state that is neither celery's, taskmon's, nor stored in the history."""


def check_states(conn, states) -> None:
    """Raise UnknownState, listing the known states, when one of ``states`` cannot match any run.

    Custom states (``update_state(state="PROGRESS")``) are known once the history holds one.
    """
    builtin = CELERY_STATES + TASKMON_STATES
    wanted = sorted({s.upper() for s in states} - set(builtin))
    if not wanted:
        return
    params = {f"s{i}": state for i, state in enumerate(wanted)}
    marks = ", ".join(f":{key}" for key in params)
    stored = {r["state"] for r in fetch(conn, f"SELECT DISTINCT state FROM task_runs WHERE state IN ({marks})",
                                        params, {})}
    unknown = [state for state in wanted if state not in stored]
    if unknown:
        params = {f"b{i}": state for i, state in enumerate(builtin)}
        marks = ", ".join(f":{key}" for key in params)
        custom = sorted(r["state"] for r in fetch(conn, f"SELECT DISTINCT state FROM task_runs WHERE state NOT IN ({marks})",
                                                  params, {}))
        raise UnknownState(f"unknown state {', '.join(unknown)}; known: {', '.join(builtin + tuple(custom))}")


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def glob_to_regex(pattern: str) -> str:
    """A glob (``*``, ``?``, ``[...]``, ``[!...]``) as an anchored POSIX regular expression."""
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            start = i + 2 if pattern[i + 1:i + 2] in ("!", "^") else i + 1
            end = pattern.find("]", start + 1)
            if end == -1:
                out.append(r"\[")
            else:
                body = pattern[i + 1:end]
                if body[0] in "!^":
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out) + "$"


def name_condition(conn_dialect: str, column: str, pattern: str, key: str) -> tuple[str, dict[str, Any]]:
    """``column`` matches the glob: equality when there is no wildcard (uses the name index)."""
    if not is_glob(pattern):
        return f"{column} = :{key}", {key: pattern}
    if conn_dialect == "sqlite":
        return f"({column} GLOB :{key})", {key: pattern.replace("[!", "[^")}
    return f"({column} ~ :{key})", {key: glob_to_regex(pattern)}


def conditions(conn_dialect: str, f: RunFilter, exact_name: bool = False, key: str = "f") -> tuple[str, dict[str, Any]]:
    """The SQL condition on task_runs for a filter, and its parameters (named ``key``_...); ``exact_name``
    takes f.name as a name, not a glob. "1 = 1" when the filter has no condition."""
    conds: list[str] = []
    params: dict[str, Any] = {}
    if f.name:
        if exact_name:
            conds.append(f"name = :{key}_name")
            params[f"{key}_name"] = f.name
        else:
            sql, p = name_condition(conn_dialect, "name", f.name, f"{key}_name")
            conds.append(sql)
            params.update(p)
    states = f.all_states()
    if len(states) == 1:
        conds.append(f"state = :{key}_state")
        params[f"{key}_state"] = states[0]
    elif states:
        names = [f"{key}_state{i}" for i in range(len(states))]
        conds.append(f"state IN ({', '.join(':' + n for n in names)})")
        params.update(zip(names, states))
    for column, value in (("worker", f.worker), ("queue", f.queue)):
        if value:
            conds.append(f"{column} = :{key}_{column}")
            params[f"{key}_{column}"] = value
    if f.since is not None:
        conds.append(f"seen_at >= :{key}_since")
        params[f"{key}_since"] = bind(conn_dialect, f.since)
    if f.until is not None:
        conds.append(f"seen_at < :{key}_until")
        params[f"{key}_until"] = bind(conn_dialect, f.until)
    if f.search:
        sql, p = search_condition(conn_dialect, f.search, f"{key}_search")
        conds.append(sql)
        params.update(p)
    contains = "instr" if conn_dialect == "sqlite" else "strpos"  # case-sensitive, as the search is
    for i, (column, text) in enumerate(f.contains):
        if column not in CONTAINS_COLUMNS:
            raise ValueError(f"cannot search {column!r}; one of {', '.join(CONTAINS_COLUMNS)}")
        conds.append(f"{contains}({column}, :{key}_in{i}) > 0")
        params[f"{key}_in{i}"] = text
    return " AND ".join(conds) or "1 = 1", params


def task_names(conn, pattern: str | None = None) -> list[str]:
    """Every task name (matching a glob), by a loose index scan: one seek per name, not a table scan."""
    sql = ("WITH RECURSIVE names(name) AS (SELECT min(name) FROM task_runs UNION ALL "
           "SELECT (SELECT min(t.name) FROM task_runs AS t WHERE t.name > names.name) FROM names "
           "WHERE names.name IS NOT NULL) "
           "SELECT names.name AS name FROM names WHERE names.name IS NOT NULL")
    params: dict[str, Any] = {}
    if pattern:
        cond, params = name_condition(dialect(conn), "names.name", pattern, "pattern")
        sql += f" AND {cond}"
    return [r["name"] for r in fetch(conn, sql, params, {})]


def _order(sort: str) -> str:
    return f"ORDER BY {SORTS[sort]} DESC, task_id DESC"


def _after(db: str, sort: str, cursor: str | None) -> tuple[str, dict[str, Any]]:
    """Runs after the cursor in the sort's order; sorting by started or runtime leaves out runs without one."""
    column = SORTS[sort]
    conds, params = ([] if sort == "seen" else [f"{column} IS NOT NULL"]), {}
    if cursor:
        params["c_key"], params["c_id"] = decode_cursor(db, sort, cursor)
        conds.append(f"({column}, task_id) < (:c_key, :c_id)")
    return " AND ".join(conds), params


def list_runs(conn, f: RunFilter = RunFilter(), limit: int = 20, sort: str = "seen",
              cursor: str | None = None) -> list[dict[str, Any]]:
    """Runs matching ``f``, newest first (by seen_at, started_at or runtime, then task_id for a stable
    order), after ``cursor`` (from page_runs); BadCursor for a cursor it did not hand out.

    A glob and several states are split into one query per (name, state), each a short walk of
    its (name, seen_at) or (state, seen_at) index, merged; a single condition on a large history
    would otherwise make the database read and sort every matching run to return the newest few.
    A search is one query: on PostgreSQL its candidates come from the search index
    (storage.pg_search_index) or a scan, on SQLite from the newest runs, then the search index or a
    scan (_scan_search).
    """
    if sort not in SORTS:
        raise ValueError(f"unknown sort {sort!r}; one of {', '.join(SORTS)}")
    db = dialect(conn)
    after, after_params = _after(db, sort, cursor)
    names: list[str | None] = [f.name] if f.name else [None]
    if f.name and is_glob(f.name) and not f.search:
        names = task_names(conn, f.name)
        if not names:
            return []
    states = f.all_states() or (None,)
    parts = [replace(f, name=n, states=(s,) if s else (), failed=False) for n in names for s in states]
    order = _order(sort)
    if len(parts) == 1 or len(parts) > MAX_PARTS or f.search:
        exact = len(parts) == 1 and not (f.search and f.name and is_glob(f.name))
        cond, params = conditions(db, parts[0] if exact else f, exact_name=exact)
        where = f"{cond} AND {after}" if after else cond
        sql = f"SELECT {SUMMARY} FROM task_runs WHERE {where} {order} LIMIT :limit"
        if f.search and db == "sqlite":
            return _scan_search(conn, f.search, sort, where, after, {**params, **after_params, "limit": limit})
        if f.search:
            indexed = pg_search_index.candidates_sql(f.search, conn, "idx")
            if indexed is not None:
                sql = f"SELECT {SUMMARY} FROM task_runs WHERE {indexed[0]} AND {where} {order} LIMIT :limit"
                params = {**params, **indexed[1]}
    else:
        selects, params = [], {}
        for i, part in enumerate(parts):
            cond, p = conditions(db, part, exact_name=True, key=f"p{i}")
            where = f"{cond} AND {after}" if after else cond
            selects.append(f"SELECT * FROM (SELECT {SUMMARY} FROM task_runs WHERE {where} {order} "
                           f"LIMIT :limit) AS p{i}")
            params.update(p)
        sql = f"SELECT {SUMMARY} FROM ({' UNION ALL '.join(selects)}) AS runs {order} LIMIT :limit"
    return fetch(conn, sql, {**params, **after_params, "limit": limit}, DECODE)


def _scan_search(conn, text: str, sort: str, where: str, after: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """A search on SQLite: the newest SEARCH_WINDOW runs first, then the text index's candidates
    (storage.search_index), or without it every run.

    Newest first through the sort's index, a common text fills the page within a few hundred runs;
    a rare one would have the scan visit the whole history in index order, one random row read
    each. So when the window does not fill the page (every match in it is newer than any outside
    it, so a full page from it is the right page), the candidates are tested, or the whole table
    is read in storage order, the cheap way to visit every row, and only the matches are sorted
    ("+column": not by the index).
    """
    order = _order(sort)
    window = (f"SELECT {SUMMARY} FROM (SELECT * FROM task_runs {'WHERE ' + after if after else ''} {order} "
              f"LIMIT :window) AS newest WHERE {where} {order} LIMIT :limit")
    rows = fetch(conn, window, {**params, "window": SEARCH_WINDOW}, DECODE)
    if len(rows) >= params["limit"]:
        return rows
    column = SORTS[sort]
    raw = conn if isinstance(conn, sqlite3.Connection) else sqlite_driver(conn)
    indexed = search_index.candidates_sql(text, raw, "idx") if raw is not None else None
    if indexed is not None:
        where, params = f"{indexed[0]} AND {where}", {**params, **indexed[1]}
    every = f"SELECT {SUMMARY} FROM task_runs WHERE {where} ORDER BY +{column} DESC, task_id DESC LIMIT :limit"
    return fetch(conn, every, params, DECODE)


def page_runs(conn, f: RunFilter = RunFilter(), limit: int = 50, sort: str = "seen",
              cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """One page of list_runs and the cursor of the next page (None on the last page)."""
    runs = list_runs(conn, f, limit=limit + 1, sort=sort, cursor=cursor)
    if len(runs) <= limit:
        return runs, None
    runs = runs[:limit]
    return runs, encode_cursor(sort, runs[-1])


def changed_since(conn, f: RunFilter, after: datetime, until: datetime | None = None,
                  limit: int = 1000) -> list[dict[str, Any]]:
    """Runs matching ``f`` written after ``after`` (and at or before ``until``), oldest write first."""
    db = dialect(conn)
    cond, params = conditions(db, f)
    sql = f"SELECT {SUMMARY} FROM task_runs WHERE {cond} AND updated_at > :after"
    params["after"] = bind(db, after)
    if until is not None:
        sql += " AND updated_at <= :until"
        params["until"] = bind(db, until)
    sql += " ORDER BY updated_at, task_id LIMIT :limit"
    return fetch(conn, sql, {**params, "limit": limit}, DECODE)


def latest_update(conn) -> datetime | None:
    return fetch(conn, "SELECT max(updated_at) AS updated_at FROM task_runs", {}, DECODE)[0]["updated_at"]


def known_queues(conn) -> list[str]:
    """Every queue name the history has seen a task sent to."""
    rows = fetch(conn, "SELECT queue FROM task_runs WHERE queue IS NOT NULL GROUP BY queue ORDER BY queue", {}, {})
    return [r["queue"] for r in rows]


def _one(conn, sql: str, params: dict[str, Any]) -> dict[str, Any] | None:
    rows = fetch(conn, sql, params, DECODE)
    return rows[0] if rows else None


def _summary(conn, task_id: str) -> dict[str, Any] | None:
    return _one(conn, f"SELECT {SUMMARY} FROM task_runs WHERE task_id = :task_id", {"task_id": task_id})


def _workflow_size(conn, root_id: str) -> int:
    """Runs whose root is ``root_id``: the root itself, if stored, and the rest through the
    partial index on root_id, which holds only the runs whose root is another task."""
    members = _one(conn, "SELECT count(*) AS n FROM task_runs WHERE root_id = :root_id AND root_id != task_id",
                   {"root_id": root_id})
    root = _one(conn, "SELECT count(*) AS n FROM task_runs WHERE task_id = :root_id AND root_id = :root_id",
                {"root_id": root_id})
    return members["n"] + root["n"]


def timeline(run: dict[str, Any]) -> list[dict[str, Any]]:
    """sent -> received -> started -> finished, the steps that are known, with the gap before each."""
    out, previous = [], None
    for event, column in TIMELINE_EVENTS:
        at = run.get(column)
        if at is None:
            continue
        gap = (at - previous).total_seconds() if previous is not None else None
        out.append({"event": event, "at": at, "after": gap})
        previous = at
    return out


def attempts(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempts of a run as far as its one row can tell, oldest first.

    A retried task keeps its id, and its row describes the latest attempt: that attempt's times
    (sent, received, started, finished) and its outcome and exception. An earlier attempt is
    known to have ended in a retry, and the first one to have been first seen at ``seen_at``;
    their own times and exceptions were replaced by the next attempt's (``known`` False).
    """
    n = run.get("retries") or 0
    earlier = [{"number": k, "outcome": "RETRY", "known": False, "steps": [],
                "first_seen": run.get("seen_at") if k == 1 else None} for k in range(1, n + 1)]
    last = {"number": n + 1, "outcome": run.get("state"), "known": True, "steps": timeline(run),
            "first_seen": run.get("seen_at") if n == 0 else None, "exception": run.get("exception")}
    return [*earlier, last]


def run_detail(conn, task_id: str) -> dict[str, Any] | None:
    """One run with every stored field, its timeline and its place in the workflow; None if unknown."""
    run = _one(conn, f"SELECT {', '.join(RUN_FIELDS)} FROM task_runs WHERE task_id = :task_id", {"task_id": task_id})
    if run is None:
        return None
    ancestors: list[dict[str, Any]] = []  # parent first, up to the root
    missing_parent = None
    seen = {task_id}
    parent_id = run["parent_id"]
    while parent_id and parent_id not in seen and len(ancestors) < MAX_CHAIN:
        seen.add(parent_id)
        parent = _one(conn, f"SELECT {SUMMARY}, parent_id AS _parent_id FROM task_runs WHERE task_id = :task_id",
                      {"task_id": parent_id})
        if parent is None:
            missing_parent = parent_id
            break
        parent_id = parent.pop("_parent_id")
        ancestors.append(parent)
    children = fetch(conn, f"SELECT {SUMMARY} FROM task_runs WHERE parent_id = :task_id "
                           "ORDER BY seen_at, task_id LIMIT :limit", {"task_id": task_id, "limit": MAX_CHILDREN}, DECODE)
    root_id = run["root_id"]
    root = None
    if root_id and root_id != task_id:
        root = next((a for a in ancestors if a["task_id"] == root_id), None) or _summary(conn, root_id)
    workflow_size = _workflow_size(conn, root_id) if root_id else 1
    return {
        "run": run,
        "timeline": timeline(run),
        "attempts": attempts(run),
        "parent": ancestors[0] if ancestors else None,
        "ancestors": ancestors,
        "missing_parent": missing_parent,
        "root_id": root_id,
        "root": root,
        "children": children,
        "workflow_size": workflow_size,
    }


def state_counts(conn) -> dict[str, int]:
    """How many task runs are in each state."""
    rows = fetch(conn, "SELECT state, count(*) AS n FROM task_runs GROUP BY state", {}, {})
    return {r["state"]: r["n"] for r in sorted(rows, key=lambda r: r["state"])}
