"""Live queue depths read from the broker: Redis lists (priority sub-queues included) and RabbitMQ queues."""
from __future__ import annotations

import logging
from typing import Any, Iterable
from urllib.parse import urlsplit

from tasks.redact import mask_url
from storage.errors import first_line

log = logging.getLogger(__name__)

# kombu's Redis transport keeps one list per priority step: priority 0 in the key "<queue>", a
# message of step p in "<queue>\x06\x16<p>" (kombu.transport.redis.Channel.sep and _q_for_pri).
# The default steps are 0, 3, 6, 9, but ``priority_steps`` can be any of 0-9, so all are read.
REDIS_PRIORITY_SEP = "\x06\x16"
REDIS_PRIORITIES = tuple(range(10))
QUEUE_FIELDS = ("name", "messages", "consumers", "by_priority", "exists")
TIMEOUT = 5.0


class BrokerError(RuntimeError):
    """The broker cannot be reached or read; the message says what to do."""


def redis_key(queue: str, priority: int) -> str:
    return f"{queue}{REDIS_PRIORITY_SEP}{priority}" if priority else queue


def queue_depths(settings, queues: Iterable[str]) -> list[dict[str, Any]]:
    """Messages waiting in each queue, by name, on ``settings.broker_url``; unknown broker kinds are a BrokerError.

    It takes the settings rather than a URL so that every reader also gets
    ``broker_global_keyprefix``, the Redis transport's prefix that kombu puts before every key:
    without it a prefixed app's queues would read as empty."""
    broker_url = settings.broker_url
    names = sorted(set(queues))
    scheme = urlsplit(broker_url).scheme.split("+", 1)[0]
    if scheme in ("redis", "rediss"):
        return _redis_depths(broker_url, names, settings.broker_global_keyprefix)
    if scheme in ("amqp", "amqps", "pyamqp"):
        return _amqp_depths(broker_url, names)
    raise BrokerError(f"cannot read queue depths from a {scheme}:// broker; taskmon reads redis:// and amqp://")


def _unreachable(url: str, exc: Exception) -> BrokerError:
    reason = first_line(exc)
    return BrokerError(f"cannot reach the broker at {mask_url(url)}: {reason}; start it or set TASKMON_BROKER_URL")


def redis_lengths(client, names: Iterable[str], prefix: str = "", *,
                  delete: bool = False) -> dict[str, dict[int, int | Exception]]:
    """LLEN of each queue's ten priority lists: {queue: {priority: length}}, a Redis error where a key is not a list.

    With ``delete`` the lists are deleted in the same MULTI/EXEC, so that a message published
    meanwhile is either counted and deleted, or kept. What a key that is not a list means is the
    caller's to say (a depth skips it, a purge refuses it); the error stands in its place here."""
    keys = {name: {pri: prefix + redis_key(name, pri) for pri in REDIS_PRIORITIES} for name in names}
    with client.pipeline(transaction=delete) as pipe:
        for per_queue in keys.values():
            for key in per_queue.values():
                pipe.llen(key)
        if delete:
            for per_queue in keys.values():
                pipe.delete(*per_queue.values())
        replies = iter(pipe.execute(raise_on_error=False))
    return {name: {pri: next(replies) for pri in per_queue} for name, per_queue in keys.items()}


def _redis_depths(url: str, names: list[str], prefix: str = "") -> list[dict[str, Any]]:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT)
    try:
        lengths = redis_lengths(client, names, prefix)
    except redis.RedisError as exc:
        raise _unreachable(url, exc) from None
    finally:
        client.close()
    out = []
    for name in names:
        by_priority = {}
        for pri, n in lengths[name].items():
            if isinstance(n, Exception):  # a key of that name that is not a list: not a kombu queue
                log.warning("redis key %r is not a list: %s", prefix + redis_key(name, pri), n)
            elif n:
                by_priority[str(pri)] = n
        # Redis drops an empty list, so an idle queue and an unknown one look the same: exists is unknown.
        out.append({"name": name, "messages": sum(by_priority.values()), "consumers": None,
                    "by_priority": by_priority, "exists": None})
    return out


def _amqp_depths(url: str, names: list[str]) -> list[dict[str, Any]]:
    from amqp.exceptions import NotFound
    from kombu import Connection

    out = []
    with Connection(url, connect_timeout=TIMEOUT) as conn:
        try:
            conn.connect()
        except conn.connection_errors as exc:
            raise _unreachable(url, exc) from None
        for name in names:
            # A passive declare only asks; on an unknown queue the server closes the channel (404).
            channel = conn.channel()
            try:
                _, messages, consumers = channel.queue_declare(queue=name, passive=True)
                out.append({"name": name, "messages": messages, "consumers": consumers, "by_priority": None, "exists": True})
            except NotFound:
                out.append({"name": name, "messages": None, "consumers": None, "by_priority": None, "exists": False})
            finally:
                if channel.is_open:
                    channel.close()
    return out
