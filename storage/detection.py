"""Reads the detectors need and the writes that apply their findings (conditional: an event
written in between wins, and the finding is dropped until the next sweep looks again)."""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable, Sequence

from sqlalchemy import Connection, and_, func, or_, select, update

from storage.schema import dead_letters as dl
from storage.schema import receiver_gaps, task_runs, workers

DETECT_COLUMNS = ("task_id", "name", "state", "state_at", "worker", "queue", "eta", "seen_at", "sent_at",
                  "started_at", "stuck_at")

# What monitor.detectors.deadletters.dead_letter reads of a run.
LETTER_COLUMNS = ("task_id", "name", "state", "state_at", "exception", "exception_type", "queue", "worker",
                  "seen_at", "sent_at", "received_at", "started_at", "finished_at")


def _runs(conn: Connection, *where) -> list[dict[str, Any]]:
    cols = [task_runs.c[c] for c in DETECT_COLUMNS]
    return [dict(r) for r in conn.execute(select(*cols).where(*where)).mappings()]


def list_workers(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(workers)).mappings()]


def latest_gap_end(conn: Connection) -> datetime | None:
    """When taskmon's event feed last came back after an interval in which events may be missing."""
    return conn.execute(select(func.max(receiver_gaps.c.ended_at))).scalar()


def runs_on_workers(conn: Connection, hostnames: Iterable[str], states: Sequence[str]) -> list[dict[str, Any]]:
    hostnames = list(hostnames)
    if not hostnames:
        return []
    return _runs(conn, task_runs.c.state.in_(states), task_runs.c.worker.in_(hostnames))


def started_before(conn: Connection, cutoff: datetime) -> list[dict[str, Any]]:
    return _runs(conn, task_runs.c.state == "STARTED", task_runs.c.started_at <= cutoff)


def waiting_since_before(conn: Connection, states: Sequence[str], cutoff: datetime) -> list[dict[str, Any]]:
    """Rows in ``states`` sent before ``cutoff`` whose latest send is not flagged stuck yet."""
    sent = func.coalesce(task_runs.c.sent_at, task_runs.c.seen_at)
    return _runs(conn, task_runs.c.state.in_(states), sent <= cutoff,
                 or_(task_runs.c.stuck_at.is_(None), task_runs.c.stuck_at < sent))


def apply_verdict(conn: Connection, verdict, now: datetime) -> bool:
    """Set LOST/TIMEOUT if the row is still in the state it was read in; True if it was."""
    seen_at = task_runs.c.state_at
    result = conn.execute(
        update(task_runs)
        .where(task_runs.c.task_id == verdict.task_id, task_runs.c.state == verdict.seen_state,
               seen_at.is_(None) if verdict.seen_state_at is None else seen_at == verdict.seen_state_at)
        .values(state=verdict.state, state_at=verdict.at, exception=verdict.message,
                exception_type=verdict.exception_type, traceback=None, result=None, updated_at=now)
    )
    return result.rowcount == 1


def flag_stuck(conn: Connection, stuck, waiting_states: Sequence[str], now: datetime) -> bool:
    sent = func.coalesce(task_runs.c.sent_at, task_runs.c.seen_at)
    result = conn.execute(
        update(task_runs)
        .where(task_runs.c.task_id == stuck.task_id, task_runs.c.state.in_(waiting_states),
               task_runs.c.sent_at.is_not_distinct_from(stuck.seen_sent_at),
               or_(task_runs.c.started_at.is_(None), task_runs.c.started_at < sent))
        .values(stuck_at=stuck.at, updated_at=now)
    )
    return result.rowcount == 1


def mark_worker_lost(conn: Connection, hostname: str, last_heartbeat: datetime, now: datetime) -> bool:
    """status 'lost' for a silent worker; its next heartbeat (newer) sets it online again."""
    result = conn.execute(
        update(workers)
        .where(workers.c.hostname == hostname, workers.c.status == "online",
               workers.c.last_heartbeat == last_heartbeat)
        .values(status="lost", updated_at=now)
    )
    return result.rowcount == 1


def dead_candidates(conn: Connection, dead_states: Sequence[str], *, updated_since: datetime | None,
                    limit: int) -> list[dict[str, Any]]:
    """Rows in a dead state that have no dead letter yet, one about an earlier death, or one that has
    not got the task's name the row has since learnt.

    Only the columns a dead letter takes: args, result and traceback stay in task_runs.
    """
    query = (
        select(*(task_runs.c[c] for c in LETTER_COLUMNS))
        .outerjoin(dl, dl.c.task_id == task_runs.c.task_id)
        .where(task_runs.c.state.in_(dead_states),
               or_(dl.c.task_id.is_(None), dl.c.dead_at != task_runs.c.state_at,
                   and_(dl.c.name.is_(None), task_runs.c.name.is_not(None))),
               # a rejected task the broker requeues is not dead (monitor.detectors.deadletters)
               or_(task_runs.c.state != "REJECTED", task_runs.c.exception.is_(None),
                   task_runs.c.exception.not_like("%requeue=True)")))
        .order_by(task_runs.c.updated_at)
        .limit(limit)
    )
    if updated_since is not None:
        query = query.where(task_runs.c.updated_at >= updated_since)
    return [dict(r) for r in conn.execute(query).mappings()]


def recovered_candidates(conn: Connection, keep_open_states: Sequence[str], *,
                         updated_since: datetime | None) -> list[dict[str, Any]]:
    """Open dead letters whose task has since moved to a state that is not dead."""
    query = (
        select(dl.c.task_id, task_runs.c.state, task_runs.c.state_at)
        .join(task_runs, task_runs.c.task_id == dl.c.task_id)
        .where(dl.c.state == "open", task_runs.c.state.not_in(keep_open_states))
    )
    if updated_since is not None:
        query = query.where(task_runs.c.updated_at >= updated_since)
    return [dict(r) for r in conn.execute(query).mappings()]
