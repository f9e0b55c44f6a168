"""Broker-side management: send a task, read its result, inspect and control workers, purge, ping.

One implementation behind `taskmon send/result/inspect/purge/ping/worker` and the REST API. Every
function takes a Celery app from tasks.client.client_app, returns plain dataclasses, is bounded
by ``timeout`` (a broker that hangs costs the caller at most that, plus a few seconds of grace),
and turns a broker that is down into BrokerUnreachable, whose message is one line.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping, Sequence

from monitor.broker.queues import BrokerError, redis_key, redis_lengths
from storage.errors import first_line
from tasks.redact import mask_url, redact_repr, redact_value

DEFAULT_TIMEOUT = 5.0
_GRACE = 3.0  # what a call may take past its timeout (connecting, on a busy host) before it counts as hung


class BrokerUnreachable(BrokerError):
    """The broker (or result backend) is down, refuses us, or does not answer in time; one line."""


class BadRequest(ValueError):
    """Bad input to a broker function (args that are not a list, priority 10, unknown action); one line."""


class NoResultBackend(BadRequest):
    """Reading a result needs a result backend, and none is configured."""


# -- helpers ------------------------------------------------------------------------------------

def _unreachable(url: str, exc: BaseException | str, what: str = "broker") -> BrokerUnreachable:
    reason = exc if isinstance(exc, str) else first_line(exc)
    hint = "TASKMON_BROKER_URL" if what == "broker" else "TASKMON_RESULT_BACKEND"
    return BrokerUnreachable(f"cannot reach the {what} at {mask_url(url)}: {reason}; start it or set {hint}")


def _bounded(fn: Callable[[], Any], timeout: float, url: str, what: str = "broker") -> Any:
    """fn() in a helper thread, given up after ``timeout`` (+ grace): no call here hangs its caller.

    kombu and the redis client have their own timeouts, but not on every path (a TCP peer that
    accepts and never answers, a connection retried on publish); this is the outer bound. A call
    given up on is left to finish in its daemon thread, and its answer is dropped.
    """
    # A daemon thread, not an executor: concurrent.futures joins its threads at exit, which would
    # make a command wait for the very call it gave up on.
    box: queue.SimpleQueue = queue.SimpleQueue()

    def call():
        try:
            box.put((True, fn()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            box.put((False, exc))

    threading.Thread(target=call, name="taskmon-broker", daemon=True).start()
    try:
        done, value = box.get(timeout=timeout + _GRACE)
    except queue.Empty:
        raise _unreachable(url, f"no answer in {timeout + _GRACE:g}s", what) from None
    if done:
        return value
    from kombu.exceptions import EncodeError

    if isinstance(value, (BrokerError, BadRequest)) or not isinstance(value, Exception):
        raise value
    if isinstance(value, EncodeError):
        raise BadRequest(f"the arguments do not serialize as JSON: {first_line(value)}") from None
    # kombu, amqp, redis and socket errors, whichever the transport raises: all mean unreachable
    raise _unreachable(url, value, what) from None


def check_broker(app, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Connect once to the app's broker; BrokerUnreachable if that fails within ``timeout``."""
    def connect():
        with app.connection_for_write(connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)

    _bounded(connect, timeout, app.conf.broker_url)


def _destination(workers: Sequence[str] | None) -> list[str] | None:
    return list(workers) if workers else None


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

    return _bounded(send, timeout, app.conf.broker_url)


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

    return task_result_from_meta(task_id, _bounded(get, timeout, str(backend_url), "result backend"))


def wait_result(app, task_id: str, timeout: float = DEFAULT_TIMEOUT, poll: float = 0.1) -> TaskResult:
    """read_result until the task is ready or ``timeout`` passes; the last answer either way."""
    deadline = time.monotonic() + timeout
    while True:
        result = read_result(app, task_id, timeout=max(min(deadline - time.monotonic(), DEFAULT_TIMEOUT), 0.5))
        if result.ready or time.monotonic() >= deadline:
            return result
        time.sleep(poll)


# -- inspect and control ------------------------------------------------------------------------

# the command's word -> celery's inspect method
INSPECT_METHODS = {
    "active": "active", "reserved": "reserved", "scheduled": "scheduled", "registered": "registered",
    "stats": "stats", "revoked": "revoked", "conf": "conf", "active-queues": "active_queues",
}


@dataclass(frozen=True)
class WorkerReplies:
    """What each worker answered (by hostname), and the workers expected that did not answer in time."""

    command: str
    replies: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.replies) and not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {"command": self.command, "replies": self.replies, "missing": self.missing, "ok": self.ok}


def _merge(replies: Iterable[Mapping[str, Any]] | None) -> dict[str, Any]:
    """celery's broadcast answer, [{host: reply}, ...], as one {host: reply}."""
    out: dict[str, Any] = {}
    for reply in replies or ():
        out.update(reply)
    return out


def ping_workers(app, workers: Sequence[str] | None = None, timeout: float = 1.0) -> WorkerReplies:
    """The workers that answer a control ``ping`` within ``timeout``."""
    check_broker(app, timeout)

    def ask():
        return app.control.ping(destination=_destination(workers), timeout=timeout)

    replies = _merge(_bounded(ask, timeout, app.conf.broker_url))
    return WorkerReplies("ping", replies, sorted(set(workers or ()) - replies.keys()))


def _expected(app, workers: Sequence[str] | None, timeout: float) -> Callable[[], list[str]]:
    """Who should answer: the named workers, else those that answer a ping sent now.

    The ping runs beside the question (in a thread), so asking all workers costs one timeout, not two."""
    if workers:
        return lambda: list(workers)
    box: queue.SimpleQueue = queue.SimpleQueue()

    def ask():
        try:
            box.put(sorted(ping_workers(app, None, timeout).replies))
        except BrokerError:
            box.put([])

    threading.Thread(target=ask, name="taskmon-ping", daemon=True).start()

    answer: list[list[str]] = []

    def get() -> list[str]:
        if not answer:
            try:
                answer.append(box.get(timeout=timeout + 2 * _GRACE))
            except queue.Empty:
                answer.append([])
        return answer[0]

    return get


def inspect(app, what: str, workers: Sequence[str] | None = None, timeout: float = 1.0) -> WorkerReplies:
    """Ask workers ``what`` (a key of INSPECT_METHODS): each one's answer, and who did not answer.

    Asked by name, a worker that does not answer is missing; asked all, those that answered a
    ping just before but not the question are."""
    method = INSPECT_METHODS.get(what)
    if method is None:
        raise BadRequest(f"cannot inspect {what!r}; one of: {', '.join(INSPECT_METHODS)}")
    check_broker(app, timeout)
    expected = _expected(app, workers, timeout)

    def ask():
        return getattr(app.control.inspect(destination=_destination(workers), timeout=timeout), method)()

    replies = dict(_bounded(ask, timeout, app.conf.broker_url) or {})
    replies = {host: redact_value(reply) for host, reply in replies.items()}
    return WorkerReplies(what, replies, sorted(set(expected()) - replies.keys()))


@dataclass(frozen=True)
class ControlAction:
    """A worker remote-control command: celery's name and the arguments it takes, in order."""

    command: str
    params: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    replies: bool = True  # shutdown: the worker exits before it could answer


CONTROL_ACTIONS = {
    "pool-grow": ControlAction("pool_grow", ("n",)),
    "pool-shrink": ControlAction("pool_shrink", ("n",)),
    "autoscale": ControlAction("autoscale", ("max", "min"), ("max", "min")),
    "add-consumer": ControlAction("add_consumer", ("queue",), ("queue",)),
    "cancel-consumer": ControlAction("cancel_consumer", ("queue",), ("queue",)),
    "rate-limit": ControlAction("rate_limit", ("task_name", "rate_limit"), ("task_name", "rate_limit")),
    "time-limit": ControlAction("time_limit", ("task_name", "soft", "hard"), ("task_name",)),
    "shutdown": ControlAction("shutdown", (), replies=False),
    "pool-restart": ControlAction("pool_restart", ("modules", "reload")),
}


def control(app, action: str, workers: Sequence[str] | None = None, timeout: float = 1.0,
            **arguments: Any) -> WorkerReplies:
    """Send worker control ``action`` (a key of CONTROL_ACTIONS) with ``arguments``; what each worker replied.

    Without ``workers`` it goes to every worker. ``shutdown`` gets no reply (the worker exits first):
    its replies say "shutdown sent" for each worker that answered a ping just before.
    """
    spec = CONTROL_ACTIONS.get(action)
    if spec is None:
        raise BadRequest(f"unknown worker action {action!r}; one of: {', '.join(CONTROL_ACTIONS)}")
    unknown = set(arguments) - set(spec.params)
    if unknown:
        raise BadRequest(f"{action} takes {', '.join(spec.params) or 'no arguments'}, not {', '.join(sorted(unknown))}")
    args = {k: v for k, v in arguments.items() if v is not None}
    missing_args = [p for p in spec.required if p not in args]
    if missing_args:
        raise BadRequest(f"{action} needs {', '.join(missing_args)}")
    check_broker(app, timeout)
    expected = _expected(app, workers, timeout)
    if not spec.replies:
        expected()  # who is told, known before the shutdown can reach anyone

    def send():
        return app.control.broadcast(spec.command, arguments=args, destination=_destination(workers),
                                     reply=spec.replies, timeout=timeout)

    replies = _merge(_bounded(send, timeout, app.conf.broker_url))
    if not spec.replies:
        replies = {host: {"ok": "shutdown sent"} for host in expected()}
    return WorkerReplies(action, replies, sorted(set(expected()) - replies.keys()))


def consumed_queues(app, timeout: float = 1.0) -> dict[str, list[str]]:
    """Queue name -> the workers consuming it, from the workers that answer within ``timeout``."""
    answer = inspect(app, "active-queues", timeout=timeout)
    out: dict[str, list[str]] = {}
    for host, queues in answer.replies.items():
        for queue in queues or ():
            out.setdefault(queue["name"], []).append(host)
    return {name: sorted(hosts) for name, hosts in sorted(out.items())}


# -- purge --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PurgeCount:
    """Messages a purge removed from one queue; by_priority for Redis (the priority sub-lists)."""

    queue: str
    messages: int
    by_priority: dict[str, int] | None = None
    exists: bool | None = None  # RabbitMQ: False for a queue the broker does not have

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def purge(app, queues: Sequence[str], timeout: float = DEFAULT_TIMEOUT) -> list[PurgeCount]:
    """Delete every waiting message of each queue (Redis: all ten priority lists); the counts."""
    names = sorted(set(queues))
    if not names:
        raise BadRequest("name at least one queue to purge")
    url = app.conf.broker_url
    scheme = url.split("://", 1)[0].split("+", 1)[0]
    if scheme in ("redis", "rediss"):
        prefix = (app.conf.broker_transport_options or {}).get("global_keyprefix", "")
        return _bounded(lambda: _purge_redis(url, names, prefix, timeout), timeout, url)
    if scheme in ("amqp", "amqps", "pyamqp"):
        return _bounded(lambda: _purge_amqp(app, names, timeout), timeout, url)
    raise BadRequest(f"cannot purge a {scheme}:// broker; taskmon purges redis:// and amqp://")


def _purge_redis(url: str, names: list[str], prefix: str, timeout: float) -> list[PurgeCount]:
    import redis

    def refuse_non_lists(lengths: dict[str, dict[int, int | Exception]]) -> None:
        for name in names:
            for pri, n in lengths[name].items():
                if isinstance(n, Exception):
                    raise BadRequest(f"redis key {prefix + redis_key(name, pri)!r} is not a queue: {first_line(n)}")

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        # Refused before anything is deleted: inside the MULTI/EXEC the DEL of a key that is not a
        # list would run whatever the LLEN beside it answered.
        refuse_non_lists(redis_lengths(client, names, prefix))
        lengths = redis_lengths(client, names, prefix, delete=True)
        refuse_non_lists(lengths)  # a key that stopped being a list in between: said, though it is gone
    finally:
        client.close()
    out = []
    for name in names:
        by_priority = {str(pri): n for pri, n in lengths[name].items() if n}
        out.append(PurgeCount(name, sum(by_priority.values()), by_priority))
    return out


def _purge_amqp(app, names: list[str], timeout: float) -> list[PurgeCount]:
    from amqp.exceptions import NotFound

    out = []
    with app.connection_for_write(connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
        for name in names:
            # A passive declare first: on an unknown queue the server closes the channel (404).
            channel = conn.channel()
            try:
                channel.queue_declare(queue=name, passive=True)
                out.append(PurgeCount(name, channel.queue_purge(name) or 0, None, True))
            except NotFound:
                out.append(PurgeCount(name, 0, None, False))
            finally:
                if channel.is_open:
                    channel.close()
    return out


# -- ping ---------------------------------------------------------------------------------------

DEFAULT_PING_TASK = "maintenance.health_check"


@dataclass(frozen=True)
class PingReport:
    """The seed's "test the connection": broker, workers, and one task there and back."""

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
