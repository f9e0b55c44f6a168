"""Live answers from the workers through Celery's broadcast: inspect, pool and consumer control, limits, purge.

Every call is bounded: a worker that does not answer within ``timeout`` is left out (inspect) or a
NoReply (control), and a broker that cannot be reached is a BrokerError within seconds, never a hang.
"""
from __future__ import annotations

from typing import Any, Iterable

from storage.errors import first_line
from tasks.redact import mask_url
from tasks.replay import BrokerError

# What `inspect` can ask, as Celery's Inspect methods name it.
INSPECT = ("active", "reserved", "scheduled", "registered", "stats", "conf", "active_queues", "revoked")
TIMEOUT = 2.0


class NoReply(LookupError):
    """No worker of that name answered within the timeout."""


class Refused(ValueError):
    """The worker answered with an error (a pool that cannot grow, an unknown task)."""


def _broker_error(app, exc: Exception) -> BrokerError:
    return BrokerError(f"cannot reach the broker at {mask_url(app.conf.broker_url)}: {first_line(exc)}; "
                       f"start it or set TASKMON_BROKER_URL")


def _connection_errors(app) -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError

    with app.connection_for_write() as conn:
        return (OperationalError, OSError, *conn.connection_errors, *conn.channel_errors)


def inspect(app, what: Iterable[str], destination: list[str] | None = None,
            timeout: float = TIMEOUT) -> dict[str, dict[str, Any]]:
    """{hostname: {what: answer}} of the workers that answered each question within ``timeout``."""
    errors = _connection_errors(app)
    out: dict[str, dict[str, Any]] = {}
    ask = app.control.inspect(destination=destination, timeout=timeout)
    for name in what:
        if name not in INSPECT:
            raise ValueError(f"cannot inspect {name!r}: one of {', '.join(INSPECT)}")
        try:
            replies = getattr(ask, name)() or {}
        except errors as exc:
            raise _broker_error(app, exc) from None
        for hostname, answer in replies.items():
            out.setdefault(hostname, {})[name] = answer
    return out


def control(app, command: str, hostname: str, arguments: dict[str, Any] | None = None,
            timeout: float = TIMEOUT) -> Any:
    """Send a remote-control ``command`` to one worker and return its answer; NoReply, Refused, BrokerError."""
    errors = _connection_errors(app)
    wait = command != "shutdown"  # a worker shutting down does not answer
    try:
        replies = app.control.broadcast(command, arguments=arguments or {}, destination=[hostname], reply=wait,
                                        timeout=timeout)
    except errors as exc:
        raise _broker_error(app, exc) from None
    if not wait:
        return {"ok": "shutdown sent"}
    for reply in replies or ():
        if hostname in reply:
            answer = reply[hostname]
            if isinstance(answer, dict) and "error" in answer:
                raise Refused(f"{hostname} refused {command}: {answer['error']}")
            return answer
    raise NoReply(f"no worker {hostname!r} answered {command} within {timeout:g}s: is it running? "
                  f"GET /api/v1/workers lists the workers seen")


def purge(app, queue: str) -> int:
    """Delete every message waiting in ``queue`` (Redis: every priority step); how many were deleted."""
    errors = _connection_errors(app)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            return conn.default_channel.queue_purge(queue) or 0
    except errors as exc:
        if _not_found(exc):
            raise NoReply(f"no queue {queue!r} on the broker") from None
        raise _broker_error(app, exc) from None


def _not_found(exc: BaseException) -> bool:
    return getattr(exc, "code", None) == 404 or type(exc).__name__ == "NotFound"
