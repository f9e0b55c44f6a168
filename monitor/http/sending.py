"""Sending a task by name and reading results from the result backend, through the server's Celery client."""
from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from fastapi import Request

from monitor.http.problems import unavailable
from storage.errors import first_line
from tasks.redact import mask_url

_LOCK = threading.Lock()
# Bounded waits: a backend that went away must answer 503 within seconds, never hang a request.
BACKEND_CONF = {
    "redis_socket_connect_timeout": 3,
    "redis_socket_timeout": 5,
    "result_backend_always_retry": False,
    "result_backend_max_retries": 1,
}


def results_app(request: Request):
    """The Celery client with the result backend (503 when none is configured)."""
    state = request.app.state
    backend = state.settings.result_backend
    if not backend:
        raise unavailable("no result backend is configured: set result_backend (TASKMON_RESULT_BACKEND) to read "
                          "task results")
    with _LOCK:
        if getattr(state, "results_celery", None) is None:
            from tasks.client import client_app

            state.results_celery = client_app(state.settings.broker_url, backend, name="taskmon-api-results",
                                              task_send_sent_event=True, **BACKEND_CONF)
    return state.results_celery


def _backend_down(request: Request, exc: Exception):
    where = mask_url(request.app.state.settings.result_backend)
    return unavailable(f"cannot read the result backend at {where}: {first_line(exc)}")


def backend_errors() -> tuple[type[BaseException], ...]:
    """What a result backend raises when it cannot be reached or read (each client has its own)."""
    from celery.exceptions import BackendError
    from kombu.exceptions import OperationalError

    errors: list[type[BaseException]] = [OSError, BackendError, OperationalError]
    try:
        import redis

        errors.append(redis.RedisError)
    except ImportError:
        pass
    try:
        from sqlalchemy.exc import SQLAlchemyError

        errors.append(SQLAlchemyError)
    except ImportError:
        pass
    return tuple(errors)


def exception_value(value: BaseException) -> dict[str, str]:
    return {"type": type(value).__name__, "message": str(value)}


def result_of(request: Request, task_id: str, wait: float | None = None) -> dict[str, Any]:
    """What the result backend holds for ``task_id`` (PENDING for an id it never heard of)."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    app = results_app(request)
    result = app.AsyncResult(task_id)
    try:
        if wait:
            try:
                result.get(timeout=wait, propagate=False, interval=0.1, disable_sync_subtasks=False)
            except CeleryTimeout:
                pass
        meta = result.backend.get_task_meta(task_id)
    except backend_errors() as exc:
        raise _backend_down(request, exc) from None
    value = meta.get("result")
    state = meta.get("status", "PENDING")
    if state in ("FAILURE", "RETRY", "REVOKED") and isinstance(value, dict) and "exc_type" in value:
        value = {"type": value.get("exc_type"), "message": " ".join(map(str, value.get("exc_message") or ()))}
    elif isinstance(value, BaseException):
        value = exception_value(value)
    done = meta.get("date_done")
    if isinstance(done, str):
        done = datetime.fromisoformat(done)
    return {"task_id": task_id, "state": state, "ready": state in READY_STATES, "result": value,
            "traceback": meta.get("traceback"), "date_done": done}


READY_STATES = ("SUCCESS", "FAILURE", "REVOKED")


def send(request: Request, name: str, *, args: list, kwargs: dict, queue: str | None, countdown: float | None,
         eta: datetime | None, expires: float | datetime | None, priority: int | None) -> str:
    """Send task ``name`` to the broker (with a task-sent event); the new task id."""
    from kombu.exceptions import EncodeError, OperationalError

    from monitor.http.problems import bad_request
    from monitor.http.replaying import client
    from tasks.replay import _broker_error

    app = client(request)
    options = {k: v for k, v in (("queue", queue), ("countdown", countdown), ("eta", eta), ("expires", expires),
                                 ("priority", priority)) if v is not None}
    try:
        return app.send_task(name, args=args, kwargs=kwargs, retry=True,
                             retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                           "interval_max": 1}, **options).id
    except EncodeError as exc:
        raise bad_request(f"the arguments do not serialize as JSON: {first_line(exc)}") from None
    except ValueError as exc:  # celery's own checks of the options (an expiry out of range)
        raise bad_request(first_line(exc)) from None
    except (OperationalError, OSError) as exc:
        raise _broker_error(app, exc) from None
