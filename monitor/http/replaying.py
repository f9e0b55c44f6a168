"""Sending replays through the one Celery client app of the server (tasks.replay does the work)."""
from __future__ import annotations

import threading

from fastapi import Request

from tasks.replay import ReplayPlan, replay


_LOCK = threading.Lock()


def client(request: Request):
    """The server's Celery client app (sends tasks and control commands), made on first use."""
    state = request.app.state
    with _LOCK:
        if getattr(state, "celery", None) is None:
            from tasks.replay import celery_client

            state.celery = celery_client(state.settings.broker_url)
    return state.celery


def replay_plans(request: Request, plans: list[ReplayPlan], *, dry_run: bool) -> list[dict]:
    out = []
    for plan in plans:
        new_id = None if dry_run else replay(request.app.state.engine, client(request), plan)
        out.append({"task_id": plan.task_id, "name": plan.name, "queue": plan.queue, "new_task_id": new_id})
    return out


def send_now(request: Request, name: str, *, args, kwargs, queue: str | None) -> str:
    """Send task ``name`` (a schedule entry's run now); the new task id."""
    from kombu.exceptions import OperationalError

    from tasks.replay import BrokerError, _broker_error

    app = client(request)
    try:
        return app.send_task(name, args=args, kwargs=kwargs, queue=queue or None, retry=True,
                             retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                           "interval_max": 1}).id
    except (OperationalError, OSError) as exc:
        raise _broker_error(app, exc) from None
    except BrokerError:
        raise
