"""Send a task by name, read its result, and ping: broker, workers and one task there and back.

One implementation behind `taskmon send/result/ping` and the REST API. Every function takes a
Celery app from tasks.client.client_app, returns plain dataclasses and is bounded by ``timeout``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping, Sequence

from monitor.broker.calls import DEFAULT_TIMEOUT, BadRequest, BrokerUnreachable, NoResultBackend, bounded, check_broker
from monitor.broker.control import ping_workers
from tasks.redact import mask_url, redact_repr, redact_value

# -- send ---------------------------------------------------------------------------------------

PRIORITY_RANGE = range(10)


def send_task(app, name: str, args: Sequence | None = None, kwargs: Mapping | None = None, *,
              queue: str | None = None, countdown: float | None = None, eta: datetime | None = None,
              expires: float | datetime | None = None, priority: int | None = None,
              timeout: float = DEFAULT_TIMEOUT) -> str:
    """Send task ``name`` by name (the app need not know it); the new task id."""
    if not name or not name.strip():
        raise BadRequest("a task name is needed")
    if args is not None and not isinstance(args, (list, tuple)):
        raise BadRequest(f"args must be a JSON list, not {type(args).__name__}")
    if kwargs is not None and not (isinstance(kwargs, dict) and all(isinstance(k, str) for k in kwargs)):
        raise BadRequest(f"kwargs must be a JSON object, not {type(kwargs).__name__}")
    if countdown is not None and eta is not None:
        raise BadRequest("give countdown or eta, not both")
    if countdown is not None and countdown < 0:
        raise BadRequest("countdown must be 0 or more seconds")
    if priority is not None and priority not in PRIORITY_RANGE:
        raise BadRequest(f"priority must be 0-9, not {priority}")
    options: dict[str, Any] = {"queue": queue, "countdown": countdown, "eta": eta, "expires": expires,
                               "priority": priority}
    options = {k: v for k, v in options.items() if v is not None}
    check_broker(app, timeout)  # a broker that is down: one line now, not a publish retried in the background
    retry = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}

    def send():
        return app.send_task(name, args=list(args or ()), kwargs=dict(kwargs or {}), retry=True,
                             retry_policy=retry, **options).id

    return bounded(send, timeout, app.conf.broker_url)


# -- results ------------------------------------------------------------------------------------

READY_STATES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "REJECTED", "IGNORED"})


@dataclass(frozen=True)
class TaskResult:
    """The result backend's view of one task; secrets in result, exception and traceback redacted."""

    task_id: str
    state: str
    result: Any = None  # a success's return value (JSON-able), None otherwise
    exception: str | None = None  # "ValueError: boom" for a failure
    traceback: str | None = None
    date_done: str | None = None  # ISO 8601 UTC, as the backend stored it
    name: str | None = None  # these six only with result_extended on the app that ran it
    args: Any = None
    kwargs: Any = None
    worker: str | None = None
    retries: int | None = None
    queue: str | None = None

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ready": self.ready}


def _exception_text(value: Any) -> str | None:
    if isinstance(value, Mapping) and "exc_type" in value:
        message = value.get("exc_message")
        if isinstance(message, (list, tuple)):
            message = ", ".join(str(m) for m in message)
        return redact_repr(f"{value['exc_type']}: {message}")
    if isinstance(value, BaseException):
        return redact_repr(f"{type(value).__name__}: {value}")
    return redact_repr(str(value)) if value is not None else None


def task_result_from_meta(task_id: str, meta: Mapping[str, Any]) -> TaskResult:
    """A TaskResult from the backend's meta dict (status, result, traceback, date_done, ...)."""
    state = meta.get("status") or "PENDING"
    value = meta.get("result")
    failed = state in ("FAILURE", "RETRY", "REVOKED", "REJECTED")
    date_done = meta.get("date_done")
    if isinstance(date_done, datetime):
        date_done = date_done.isoformat()
    return TaskResult(
        task_id=task_id, state=state,
        result=None if failed else redact_value(value),
        exception=_exception_text(value) if failed else None,
        traceback=redact_repr(meta.get("traceback")) if meta.get("traceback") else None,
        date_done=date_done, name=meta.get("name"), args=redact_value(meta.get("args")),
        kwargs=redact_value(meta.get("kwargs")), worker=meta.get("worker"), retries=meta.get("retries"),
        queue=meta.get("queue"),
    )


def read_result(app, task_id: str, timeout: float = DEFAULT_TIMEOUT) -> TaskResult:
    """What the result backend holds for ``task_id`` (PENDING when it holds nothing)."""
    backend_url = app.conf.result_backend
    if not backend_url:
        raise NoResultBackend("no result backend is configured: set TASKMON_RESULT_BACKEND (or result_backend "
                              "in the config file) to the app's result_backend")

    def get():
        # The raw meta, not AsyncResult.get(): no exception is rebuilt from a class we may not have.
        return app.backend.get_task_meta(task_id)

    return task_result_from_meta(task_id, bounded(get, timeout, str(backend_url), "result backend"))


def wait_result(app, task_id: str, timeout: float = DEFAULT_TIMEOUT, poll: float = 0.1) -> TaskResult:
    """read_result until the task is ready or ``timeout`` passes; the last answer either way."""
    deadline = time.monotonic() + timeout
    while True:
        result = read_result(app, task_id, timeout=max(min(deadline - time.monotonic(), DEFAULT_TIMEOUT), 0.5))
        if result.ready or time.monotonic() >= deadline:
            return result
        time.sleep(poll)



# -- ping ---------------------------------------------------------------------------------------

DEFAULT_PING_TASK = "maintenance.health_check"


@dataclass(frozen=True)
class PingReport:
    """The setup guides' "test the connection": broker, workers, and one task there and back."""

    broker: str  # masked URL
    broker_ok: bool
    workers: list[str] = field(default_factory=list)
    task: str | None = None
    queue: str | None = None
    task_id: str | None = None
    task_state: str | None = None
    latency_seconds: float | None = None
    reason: str | None = None  # why it is not ok, one line

    @property
    def ok(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def ping(app, queue: str | None = None, timeout: float = DEFAULT_TIMEOUT, *, task: str = DEFAULT_PING_TASK,
         args: Sequence | None = None, kwargs: Mapping | None = None) -> PingReport:
    """Broker reachable, workers answering ``ping``, and ``task`` sent to ``queue`` run to its result.

    The round trip needs the app's result backend (how else to see the task done); without one
    the report says so and is not ok.
    """
    broker = mask_url(app.conf.broker_url)
    if queue is None:
        from tasks.application import ROUTES

        queue = ROUTES.get(task, {}).get("queue")  # taskmon's own tasks go where its app routes them
    try:
        check_broker(app, timeout)
    except BrokerUnreachable as exc:
        return PingReport(broker, False, task=task, queue=queue, reason=str(exc))
    wait = min(timeout, 2.0)
    workers = sorted(ping_workers(app, None, wait).replies)
    if not workers:
        return PingReport(broker, True, task=task, queue=queue, reason=f"no worker answered ping within {wait:g}s")
    if not app.conf.result_backend:
        return PingReport(broker, True, workers, task, queue,
                          reason="no result backend configured, so no round trip: set TASKMON_RESULT_BACKEND")
    started = time.monotonic()
    task_id = send_task(app, task, args, kwargs, queue=queue, timeout=timeout)
    result = wait_result(app, task_id, timeout=max(timeout - (time.monotonic() - started), 0.5))
    latency = round(time.monotonic() - started, 4)
    if not result.ready:
        reason = f"{task} ({task_id}) was not done within {timeout:g}s (state {result.state})" + \
                 (f": does a worker consume {queue!r}?" if queue else "")
        return PingReport(broker, True, workers, task, queue, task_id, result.state, None, reason)
    if result.state != "SUCCESS":
        return PingReport(broker, True, workers, task, queue, task_id, result.state, latency,
                          f"{task} ended {result.state}: {result.exception}")
    return PingReport(broker, True, workers, task, queue, task_id, result.state, latency)
