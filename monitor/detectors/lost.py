"""Lost workers and tasks: a worker that said goodbye, or whose heartbeats stopped, takes the
tasks it had RECEIVED or STARTED with it (a worker killed with -9 sends no worker-offline).

Silence proves something only while taskmon itself was listening: ``watch_since`` is when the
event feed was last (re)connected and caught up, None while it is not; a worker is silent when
neither its last heartbeat nor ``watch_since`` is recent enough.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Iterable, Mapping

from monitor.detectors import GoneWorker, TaskVerdict, iso

# celery's worker heartbeat interval when a worker did not announce one (celery.worker.heartbeat).
DEFAULT_FREQ = 2.0
ACTIVE_STATES = ("RECEIVED", "STARTED")


def gone_workers(workers: Iterable[Mapping], now: datetime, *, multiple: float,
                 watch_since: datetime | None) -> dict[str, GoneWorker]:
    """Workers that went offline, or have been silent for more than ``multiple`` heartbeat intervals."""
    out = {}
    for w in workers:
        last, freq = w.get("last_heartbeat"), w.get("freq")
        if last is None:
            continue
        grace = timedelta(seconds=multiple * (freq or DEFAULT_FREQ))
        host = w["hostname"]
        if w["status"] == "offline":
            # The grace lets events its last tasks sent just before goodbye arrive first.
            if now >= last + grace:
                out[host] = GoneWorker(host, last + grace, last, grace, "offline",
                                       f"worker {host} went offline at {iso(last)}")
        elif freq and watch_since is not None:
            at = max(last, watch_since) + grace
            if now >= at:
                out[host] = GoneWorker(host, at, last, grace, "silent",
                                       f"no heartbeat from worker {host} since {iso(last)} "
                                       f"({multiple:g} x its {freq:g}s interval)")
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
