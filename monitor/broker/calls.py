"""Every call taskmon makes to a broker or result backend is bounded, and a broker that is down is one line.

kombu and the redis client have their own timeouts, but not on every path; `bounded` is the outer
bound, and turns whatever the transport raised into BrokerUnreachable (whose message is one
line) or BadRequest (bad input, also one line).
"""
from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from monitor.broker.queues import BrokerError
from storage.errors import first_line
from tasks.redact import mask_url

DEFAULT_TIMEOUT = 5.0
GRACE = 3.0  # what a call may take past its timeout (connecting, on a busy host) before it counts as hung


class BrokerUnreachable(BrokerError):
    """The broker (or result backend) is down, refuses us, or does not answer in time; one line."""


class BadRequest(ValueError):
    """Bad input to a broker function (args that are not a list, priority 10, unknown action); one line."""


class NoResultBackend(BadRequest):
    """Reading a result needs a result backend, and none is configured."""


def unreachable(url: str, exc: BaseException | str, what: str = "broker") -> BrokerUnreachable:
    reason = exc if isinstance(exc, str) else first_line(exc)
    hint = "TASKMON_BROKER_URL" if what == "broker" else "TASKMON_RESULT_BACKEND"
    return BrokerUnreachable(f"cannot reach the {what} at {mask_url(url)}: {reason}; start it or set {hint}")


def bounded(fn: Callable[[], Any], timeout: float, url: str, what: str = "broker") -> Any:
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
        done, value = box.get(timeout=timeout + GRACE)
    except queue.Empty:
        raise unreachable(url, f"no answer in {timeout + GRACE:g}s", what) from None
    if done:
        return value
    from kombu.exceptions import EncodeError

    if isinstance(value, (BrokerError, BadRequest)) or not isinstance(value, Exception):
        raise value
    if isinstance(value, EncodeError):
        raise BadRequest(f"the arguments do not serialize as JSON: {first_line(value)}") from None
    # kombu, amqp, redis and socket errors, whichever the transport raises: all mean unreachable
    raise unreachable(url, value, what) from None


def check_broker(app, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Connect once to the app's broker; BrokerUnreachable if that fails within ``timeout``."""
    def connect():
        with app.connection_for_write(connect_timeout=timeout) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)

    bounded(connect, timeout, app.conf.broker_url)

