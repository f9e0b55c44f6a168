"""Workers and queues from the broker: inspect and control workers, list what they consume, purge.

One implementation behind `taskmon inspect/purge/worker` and the REST API. Every function takes a
Celery app from tasks.client.client_app, returns plain dataclasses, is bounded by ``timeout`` (a
broker that hangs costs the caller at most that, plus a few seconds of grace), and turns a broker
that is down into BrokerUnreachable, whose message is one line.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from monitor.broker.calls import DEFAULT_TIMEOUT, GRACE, BadRequest, bounded, check_broker
from monitor.broker.queues import BrokerError, redis_key, redis_lengths
from storage.errors import first_line
from tasks.redact import redact_value

def _destination(workers: Sequence[str] | None) -> list[str] | None:
    return list(workers) if workers else None



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

    replies = _merge(bounded(ask, timeout, app.conf.broker_url))
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
                answer.append(box.get(timeout=timeout + 2 * GRACE))
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

    replies = dict(bounded(ask, timeout, app.conf.broker_url) or {})
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

    replies = _merge(bounded(send, timeout, app.conf.broker_url))
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
        return bounded(lambda: _purge_redis(url, names, prefix, timeout), timeout, url)
    if scheme in ("amqp", "amqps", "pyamqp"):
        return bounded(lambda: _purge_amqp(app, names, timeout), timeout, url)
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


