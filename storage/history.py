"""Reading the task history: filtered listings, one run with its workflow, rows changed since a time.

Every function takes a Connection and returns plain dicts with fixed keys.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, select, true, union_all

from storage.merge import CELERY_STATES, TASKMON_STATES
from storage.schema import task_runs

# Keys of a run in listings (history, tail, show's parent/children), in display order.
SUMMARY_FIELDS = (
    "task_id", "name", "state", "worker", "queue", "seen_at", "started_at", "finished_at",
    "runtime", "queue_wait", "retries", "exception_type", "exception", "updated_at",
)
# Keys of the timeline entries of `show`.
TIMELINE_EVENTS = (("sent", "sent_at"), ("received", "received_at"), ("started", "started_at"), ("finished", "finished_at"))
MAX_CHAIN = 100  # parent links followed at most (a cycle in bad data must not hang `show`)
MAX_CHILDREN = 1000
MAX_PARTS = 32  # list_runs merges at most this many per-(name, state) queries


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

    def all_states(self) -> tuple[str, ...]:
        states = tuple(s.upper() for s in self.states)
        if self.failed and "FAILURE" not in states:
            states += ("FAILURE",)
        return states


class UnknownState(ValueError):
    """A state filter names a state that is neither celery's, taskmon's, nor stored in the history."""


def check_states(conn: Connection, states) -> None:
    """Raise UnknownState, listing the known states, when one of ``states`` cannot match any run.

    Custom states (``update_state(state="PROGRESS")``) are known once the history holds one.
    """
    builtin = CELERY_STATES + TASKMON_STATES
    wanted = {s.upper() for s in states} - set(builtin)
    if not wanted:
        return
    stored = conn.execute(select(task_runs.c.state).distinct().where(task_runs.c.state.in_(wanted))).scalars()
    unknown = sorted(wanted - set(stored))
    if unknown:
        custom = conn.execute(select(task_runs.c.state).distinct().where(task_runs.c.state.not_in(builtin))).scalars()
        raise UnknownState(f"unknown state {', '.join(unknown)}; known: {', '.join(builtin + tuple(sorted(custom)))}")


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


def name_matches(conn: Connection, column, pattern: str):
    """``column`` matches the glob: equality when there is no wildcard (uses the name index)."""
    if not is_glob(pattern):
        return column == pattern
    if conn.dialect.name == "sqlite":
        return column.op("GLOB")(pattern.replace("[!", "[^"))
    return column.op("~")(glob_to_regex(pattern))


def where(conn: Connection, f: RunFilter, exact_name: bool = False):
    """The SQL condition for a filter; ``exact_name`` takes f.name as a name, not a glob."""
    c = task_runs.c
    conds = []
    if f.name:
        conds.append(c.name == f.name if exact_name else name_matches(conn, c.name, f.name))
    states = f.all_states()
    if states:
        conds.append(c.state == states[0] if len(states) == 1 else c.state.in_(states))
    if f.worker:
        conds.append(c.worker == f.worker)
    if f.queue:
        conds.append(c.queue == f.queue)
    if f.since is not None:
        conds.append(c.seen_at >= f.since)
    if f.until is not None:
        conds.append(c.seen_at < f.until)
    return and_(true(), *conds)


def _summary_columns():
    return [task_runs.c[k] for k in SUMMARY_FIELDS]


def task_names(conn: Connection, pattern: str | None = None) -> list[str]:
    """Every task name (matching a glob), by a loose index scan: one seek per name, not a table scan."""
    c, t = task_runs.c, task_runs.alias("t")
    names = select(func.min(c.name).label("name")).cte("names", recursive=True)
    following = select(func.min(t.c.name)).where(t.c.name > names.c.name).scalar_subquery()
    names = names.union_all(select(following).where(names.c.name.is_not(None)))
    stmt = select(names.c.name).where(names.c.name.is_not(None))
    if pattern:
        stmt = stmt.where(name_matches(conn, names.c.name, pattern))
    return [r[0] for r in conn.execute(stmt)]


def list_runs(conn: Connection, f: RunFilter = RunFilter(), limit: int = 20) -> list[dict[str, Any]]:
    """Runs matching ``f``, newest first (by seen_at, then task_id for a stable order).

    A glob and several states are split into one query per (name, state), each a short walk of
    its (name, seen_at) or (state, seen_at) index, merged; a single condition on a large history
    would otherwise make the database read and sort every matching run to return the newest few.
    """
    c = task_runs.c
    names: list[str | None] = [f.name] if f.name else [None]
    if f.name and is_glob(f.name):
        names = task_names(conn, f.name)
        if not names:
            return []
    states = f.all_states() or (None,)
    parts = [replace(f, name=n, states=(s,) if s else (), failed=False) for n in names for s in states]
    order = (c.seen_at.desc(), c.task_id.desc())
    if len(parts) == 1 or len(parts) > MAX_PARTS:
        exact = len(parts) == 1
        stmt = select(*_summary_columns()).where(where(conn, parts[0] if exact else f, exact_name=exact))
        stmt = stmt.order_by(*order).limit(limit)
    else:
        subs = [
            select(*_summary_columns()).where(where(conn, p, exact_name=True)).order_by(*order).limit(limit).subquery()
            for p in parts
        ]
        union = union_all(*[select(*s.c) for s in subs]).subquery()
        stmt = select(union).order_by(union.c.seen_at.desc(), union.c.task_id.desc()).limit(limit)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def changed_since(conn: Connection, f: RunFilter, after: datetime, until: datetime | None = None,
                  limit: int = 1000) -> list[dict[str, Any]]:
    """Runs matching ``f`` written after ``after`` (and at or before ``until``), oldest write first."""
    c = task_runs.c
    conds = [where(conn, f), c.updated_at > after]
    if until is not None:
        conds.append(c.updated_at <= until)
    stmt = select(*_summary_columns()).where(*conds).order_by(c.updated_at, c.task_id).limit(limit)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def latest_update(conn: Connection) -> datetime | None:
    return conn.execute(select(func.max(task_runs.c.updated_at))).scalar()


def known_queues(conn: Connection) -> list[str]:
    """Every queue name the history has seen a task sent to."""
    c = task_runs.c
    rows = conn.execute(select(c.queue).where(c.queue.is_not(None)).group_by(c.queue).order_by(c.queue))
    return [r[0] for r in rows]


def _summary(conn: Connection, task_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(*_summary_columns()).where(task_runs.c.task_id == task_id)).mappings().first()
    return dict(row) if row is not None else None


def _workflow_size(conn: Connection, root_id: str) -> int:
    """Runs whose root is ``root_id``: the root itself, if stored, and the rest through the
    partial index on root_id, which holds only the runs whose root is another task."""
    c = task_runs.c
    members = select(func.count()).select_from(task_runs).where(c.root_id == root_id, c.root_id != c.task_id)
    root = select(func.count()).select_from(task_runs).where(c.task_id == root_id, c.root_id == root_id)
    return conn.execute(members).scalar() + conn.execute(root).scalar()


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


def run_detail(conn: Connection, task_id: str) -> dict[str, Any] | None:
    """One run with every stored field, its timeline and its place in the workflow; None if unknown."""
    c = task_runs.c
    run = conn.execute(select(task_runs).where(c.task_id == task_id)).mappings().first()
    if run is None:
        return None
    run = dict(run)
    ancestors: list[dict[str, Any]] = []  # parent first, up to the root
    missing_parent = None
    seen = {task_id}
    parent_id = run["parent_id"]
    while parent_id and parent_id not in seen and len(ancestors) < MAX_CHAIN:
        seen.add(parent_id)
        parent = conn.execute(
            select(*_summary_columns(), c.parent_id.label("_parent_id")).where(c.task_id == parent_id)
        ).mappings().first()
        if parent is None:
            missing_parent = parent_id
            break
        parent = dict(parent)
        parent_id = parent.pop("_parent_id")
        ancestors.append(parent)
    children = [
        dict(r) for r in conn.execute(
            select(*_summary_columns()).where(c.parent_id == task_id).order_by(c.seen_at, c.task_id).limit(MAX_CHILDREN)
        ).mappings()
    ]
    root_id = run["root_id"]
    root = None
    if root_id and root_id != task_id:
        root = next((a for a in ancestors if a["task_id"] == root_id), None) or _summary(conn, root_id)
    workflow_size = _workflow_size(conn, root_id) if root_id else 1
    return {
        "run": run,
        "timeline": timeline(run),
        "parent": ancestors[0] if ancestors else None,
        "ancestors": ancestors,
        "missing_parent": missing_parent,
        "root_id": root_id,
        "root": root,
        "children": children,
        "workflow_size": workflow_size,
    }



def state_counts(conn: Connection) -> dict[str, int]:
    """How many task runs are in each state."""
    from sqlalchemy import func, select

    from storage.schema import task_runs

    rows = conn.execute(select(task_runs.c.state, func.count()).group_by(task_runs.c.state)).all()
    return {state: count for state, count in sorted(rows)}
