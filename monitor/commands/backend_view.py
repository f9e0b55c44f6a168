"""What `taskmon show` adds from the result backend: a task the history lacks, or a state it disagrees on."""
from __future__ import annotations

from typing import Any

from monitor.commands.base import Context

BACKEND_TIMEOUT = 2.0


def backend_view(ctx: Context, task_id: str, detail: dict[str, Any] | None) -> tuple[Any, str | None]:
    """(the backend's TaskResult or None, a one-line note or None).

    Nothing without a configured result backend (and then no Celery import: `show` stays fast).
    The backend's view is given when the history lacks the task or holds another state; a
    backend that is down is a note, never a failure of `show`.
    """
    if not ctx.settings.result_backend:
        return None, None
    from monitor.broker.calls import BrokerUnreachable
    from monitor.broker.sending import read_result
    from tasks.client import client_app

    app = client_app(ctx.settings.broker_url, ctx.settings.result_backend, name="taskmon-show")
    try:
        result = read_result(app, task_id, timeout=BACKEND_TIMEOUT)
    except BrokerUnreachable as exc:
        return None, f"result backend not read: {exc}"
    finally:
        app.close()
    state = (detail or {}).get("run", {}).get("state")
    if detail is not None and (result.state == "PENDING" or result.state == state):
        return None, None  # the backend knows nothing more, or agrees
    return result, None


def backend_text(task_id: str, result, in_history: bool) -> str:
    from monitor.commands.broker import result_lines

    head = "the result backend says otherwise:" if in_history else \
        f"{task_id}: not in the history; the result backend's view:"
    return "\n".join([("\n" if in_history else "") + head, *("  " + line for line in result_lines(result))])
