"""Sending replays through the one Celery client app of the server (tasks.replay does the work)."""
from __future__ import annotations

import threading

from fastapi import Request

from tasks.replay import ReplayPlan, replay


_LOCK = threading.Lock()


def client(request: Request):
    """The server's one Celery client app (broker and result backend): sends tasks, replays, control commands."""
    state = request.app.state
    with _LOCK:
        if getattr(state, "celery", None) is None:
            from tasks.client import client_app

            state.celery = client_app(state.settings.broker_url, state.settings.result_backend or None,
                                      name="taskmon-api", task_send_sent_event=True)
    return state.celery


def replay_plans(request: Request, plans: list[ReplayPlan], *, dry_run: bool) -> list[dict]:
    out = []
    for plan in plans:
        new_id = None if dry_run else replay(request.app.state.engine, client(request), plan)
        out.append({"task_id": plan.task_id, "name": plan.name, "queue": plan.queue, "new_task_id": new_id})
    return out


def send_now(request: Request, name: str, *, args, kwargs, queue: str | None) -> str:
    """Send task ``name`` (a schedule entry's run now); the new task id."""
    from monitor.broker.sending import send_task

    return send_task(client(request), name, args, kwargs, queue=queue or None)
