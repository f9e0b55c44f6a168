"""dead_letters: tasks that ended for good, their state (open, replayed, resolved) and replay links."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence

from sqlalchemy import Connection, bindparam, desc, func, select, update

from storage.runs import dialect_insert, upsert_runs
from storage.schema import dead_letters, task_runs

LETTER_STATES = ("open", "replayed", "resolved")
_FROM_DETECTOR = ("name", "reason", "exception_type", "exception", "queue", "worker", "first_seen", "last_seen",
                  "dead_at")


def name_glob(conn: Connection, column, glob: str):
    """``column`` matches a shell glob (``*`` and ``?``), case-sensitively on both databases."""
    if conn.dialect.name == "sqlite":
        return column.op("GLOB")(glob.replace("[", "[[]"))
    escaped = glob.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")


def upsert_dead_letters(conn: Connection, letters: Sequence[Mapping[str, Any]], now: datetime) -> int:
    """New dead letters open; one about a later death of the same task replaces it and opens it again."""
    if not letters:
        return 0
    stmt = dialect_insert(conn)(dead_letters)
    old, new = dead_letters.c, stmt.excluded
    sets = {col: new[col] for col in _FROM_DETECTOR}
    sets.update(state="open", resolved_at=None, resolution=None, alerted_at=None, updated_at=new.updated_at)
    rows = [{**{c: letter.get(c) for c in ("task_id", *_FROM_DETECTOR)}, "state": "open", "created_at": now,
             "updated_at": now} for letter in letters]
    conn.execute(stmt.on_conflict_do_update(index_elements=[old.task_id], set_=sets,
                                            where=(old.dead_at != new.dead_at) | (old.reason != new.reason)), rows)
    # A failure can be stored before the event that names its task (task-failed carries no name; the
    # task-received of a killed daemon's pending entries comes later): the name fills in, nothing reopens.
    named = [{"id": r["task_id"], "fill": r["name"]} for r in rows if r["name"] is not None]
    if named:
        conn.execute(update(dead_letters).where(dead_letters.c.task_id == bindparam("id"),
                                                dead_letters.c.name.is_(None)).values(name=bindparam("fill")), named)
    return len(rows)


def get_dead_letter(conn: Connection, task_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(dead_letters).where(dead_letters.c.task_id == task_id)).mappings().first()
    return dict(row) if row is not None else None


def list_dead_letters(conn: Connection, *, name: str | None = None, reason: str | None = None,
                      since: datetime | None = None, states: Iterable[str] = ("open",),
                      limit: int | None = None) -> list[dict[str, Any]]:
    """Newest deaths first."""
    query = select(dead_letters).where(dead_letters.c.state.in_(list(states)))
    if name:
        query = query.where(name_glob(conn, dead_letters.c.name, name))
    if reason:
        query = query.where(dead_letters.c.reason == reason)
    if since is not None:
        query = query.where(dead_letters.c.dead_at >= since)
    query = query.order_by(desc(dead_letters.c.dead_at), dead_letters.c.task_id)
    if limit:
        query = query.limit(limit)
    return [dict(r) for r in conn.execute(query).mappings()]


def count_dead_letters(conn: Connection) -> dict[str, int]:
    rows = conn.execute(select(dead_letters.c.state, func.count()).group_by(dead_letters.c.state)).all()
    return {state: n for state, n in rows}


def resolve(conn: Connection, task_id: str, resolution: str, now: datetime, *, only_open: bool = False) -> bool:
    """Mark a dead letter resolved; False if there is none (or, with only_open, it is not open)."""
    query = update(dead_letters).where(dead_letters.c.task_id == task_id)
    if only_open:
        query = query.where(dead_letters.c.state == "open")
    result = conn.execute(query.values(state="resolved", resolved_at=now, resolution=resolution, updated_at=now))
    return result.rowcount == 1


def record_replay(conn: Connection, original_id: str, new_run: Mapping[str, Any], now: datetime) -> None:
    """The replay's own run (PENDING until its events arrive), linked to the original; the dead letter replayed."""
    upsert_runs(conn, [dict(new_run, replay_of=original_id)])
    conn.execute(update(dead_letters).where(dead_letters.c.task_id == original_id).values(
        state="replayed", replayed_as=new_run["task_id"], replayed_at=now, updated_at=now))


def replays_of(conn: Connection, task_id: str) -> list[dict[str, Any]]:
    """Runs re-sent from ``task_id``, oldest first."""
    query = select(task_runs.c.task_id, task_runs.c.state, task_runs.c.seen_at).where(
        task_runs.c.replay_of == task_id).order_by(task_runs.c.seen_at)
    return [dict(r) for r in conn.execute(query).mappings()]
