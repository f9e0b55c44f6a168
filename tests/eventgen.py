"""Scripted Celery events (the dicts workers send) for replays, fuzzing and benchmarks' tests."""
from __future__ import annotations

import uuid

import orjson

from monitor.sources import encode_kombu_message

T0 = 1_795_000_000.0


def lifecycle(task_id: str | None = None, *, name="demo.add", t=T0, worker="w1@host", fail=False, args="(1, 2)",
              kwargs="{}") -> list[dict]:
    task_id = task_id or str(uuid.uuid4())
    base = {"uuid": task_id, "hostname": worker, "pid": 1, "clock": 1, "utcoffset": 0}
    sent = dict(base, type="task-sent", hostname="client@host", name=name, args=args, kwargs=kwargs, queue="celery",
                exchange="", routing_key="celery", root_id=task_id, parent_id=None, retries=0, eta=None,
                expires=None, timestamp=t)
    received = dict(base, type="task-received", name=name, args=args, kwargs=kwargs, root_id=task_id,
                    parent_id=None, retries=0, eta=None, expires=None, timestamp=t + 0.01)
    started = dict(base, type="task-started", timestamp=t + 0.02)
    if fail:
        end = dict(base, type="task-failed", exception="ValueError('bad')", traceback="Traceback...\nValueError: bad",
                   timestamp=t + 0.05)
    else:
        end = dict(base, type="task-succeeded", result="3", runtime=0.03, timestamp=t + 0.05)
    return [sent, received, started, end]


def publish(client, events: list[dict] | dict, db: int = 0) -> None:
    """Publish like a worker: a list goes out as one task.multi message."""
    if isinstance(events, list):
        key = "task.multi"
    else:
        key = events["type"].replace("-", ".")
    client.publish(f"/{db}.celeryev/{key}", encode_kombu_message(orjson.dumps(events), key))
