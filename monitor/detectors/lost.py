"""Lost workers and tasks: a worker that said goodbye, or whose heartbeats stopped, takes the
tasks it had RECEIVED or STARTED with it (a worker killed with -9 sends no worker-offline).

Silence proves something only while taskmon itself was listening: ``watch_since`` is when the
event feed was last (re)connected and caught up, None while it is not (a source disconnected or
its thread dead, the writer behind); a worker is silent when neither its last heartbeat nor
``watch_since`` is recent enough.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Mapping

from monitor.detectors import GoneWorker, TaskVerdict, iso

# celery's worker heartbeat interval when a worker did not announce one (celery.worker.heartbeat).
DEFAULT_FREQ = 2.0
ACTIVE_STATES = ("RECEIVED", "STARTED")
ONLINE, OFFLINE, LOST, UNKNOWN = "online", "offline", "lost", "unknown"


@dataclass(frozen=True)
class Presence:
    """What taskmon can say of a worker at some moment; ``gone`` is set when it is offline or lost."""

    state: str
    gone: GoneWorker | None = None


def watching_since(feed_since: datetime | None, gap_end: datetime | None) -> datetime | None:
    """Since when taskmon has heard every event: the feed live and caught up, and after the latest gap."""
    if feed_since is None:
        return None
    return max(feed_since, gap_end) if gap_end is not None else feed_since


def worker_presence(w: Mapping, now: datetime, *, multiple: float, watch_since: datetime | None) -> Presence:
    """The one rule for "is this worker gone?": the detectors, the worker_offline alert and `taskmon workers`.

    offline: it said goodbye. lost: the sweep found it silent (status 'lost', until its next
    heartbeat), or it has been silent for more than ``multiple`` of its heartbeat intervals
    while taskmon was listening. unknown: its heartbeats are overdue but taskmon was not
    listening (``watch_since`` None), or it never announced an interval: silence proves nothing.
    """
    host, last, freq = w["hostname"], w.get("last_heartbeat"), w.get("freq")
    if last is None:
        return Presence(UNKNOWN)
    grace = timedelta(seconds=multiple * (freq or DEFAULT_FREQ))
    if w["status"] == "offline":
        # The grace lets events its last tasks sent just before goodbye arrive first.
        return Presence(OFFLINE, GoneWorker(host, last + grace, last, grace, "offline",
                                            f"worker {host} went offline at {iso(last)}"))
    silent = f"no heartbeat from worker {host} since {iso(last)} ({multiple:g} x its {freq or DEFAULT_FREQ:g}s interval)"
    # Its tasks are judged only after a grace while taskmon listens: their events may still come.
    at = max(last, watch_since) + grace if watch_since is not None else last + grace
    if w["status"] == "lost":
        return Presence(LOST, GoneWorker(host, at, last, grace, "lost", silent))
    if freq and watch_since is not None and now >= at:
        return Presence(LOST, GoneWorker(host, at, last, grace, "silent", silent))
    return Presence(UNKNOWN if now >= last + grace else ONLINE)


def gone_workers(workers: Iterable[Mapping], now: datetime, *, multiple: float,
                 watch_since: datetime | None) -> dict[str, GoneWorker]:
    """Workers gone (offline or lost) for long enough that their unfinished tasks may be judged."""
    out = {}
    for w in workers:
        gone = worker_presence(w, now, multiple=multiple, watch_since=watch_since).gone
        if gone is not None and now >= gone.at:
            out[w["hostname"]] = gone
    return out


def lost_tasks(rows: Iterable[Mapping], gone: Mapping[str, GoneWorker], now: datetime) -> list[TaskVerdict]:
    """Tasks RECEIVED or STARTED on a gone worker, and silent themselves for as long."""
    out = []
    for row in rows:
        worker = gone.get(row.get("worker"))
        if row["state"] not in ACTIVE_STATES or worker is None:
            continue
        # An event of the task after the worker's last heartbeat is a sign of life too.
        at = max(worker.at, row["state_at"] + worker.grace) if row.get("state_at") else worker.at
        if now < at:
            continue
        out.append(TaskVerdict(
            task_id=row["task_id"], name=row.get("name"), state="LOST", at=at, exception_type="WorkerLostError",
            message=f"{worker.message} while the task was {row['state']}",
            seen_state=row["state"], seen_state_at=row.get("state_at"),
        ))
    return out
