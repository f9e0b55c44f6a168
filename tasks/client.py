"""The Celery client app the daemon and the commands use to send tasks, broadcast and read results.

It is never the process's current app (a worker or script that imports taskmon keeps its own),
and a broker that is down fails after one bounded retry instead of blocking the caller.
"""
from __future__ import annotations

from typing import Any

CLIENT_CONF = {
    "broker_connection_retry_on_startup": False,
    "broker_connection_timeout": 5,
    "broker_connection_max_retries": 1,
    "task_serializer": "json",
    "accept_content": ["json"],
}


def client_app(broker_url: str, backend: str | None = None, *, name: str = "taskmon-client", **conf: Any):
    """A Celery app on ``broker_url`` (and result ``backend``), with ``conf`` over the client defaults."""
    from celery import Celery

    app = Celery(name, broker=broker_url, backend=backend or None, set_as_current=False)
    app.conf.update({**CLIENT_CONF, **conf})
    return app
