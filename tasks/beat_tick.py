"""Beat's heartbeat: the DatabaseScheduler records each tick on the broker, `taskmon schedule status` reads it.

A Redis hash ``taskmon:beat`` (under the transport's global_keyprefix) holding the host, pid and
UTC time of the last tick; it expires, so a beat that died leaves no fresh tick behind. Only Redis
brokers carry it: on another broker the status says so and shows the entries' last runs alone.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger(__name__)

TICK_KEY = "taskmon:beat"
TICK_TTL = 24 * 3600  # long enough to say when beat last ticked after it stopped; a day later: never seen


def tick_client(broker_url: str, timeout: float = 2.0):
    """A redis client for the broker, or None for a broker that is not Redis."""
    if broker_url.split("://", 1)[0].split("+", 1)[0] not in ("redis", "rediss"):
        return None
    import redis

    return redis.Redis.from_url(broker_url, socket_connect_timeout=timeout, socket_timeout=timeout)


def record_tick(client, prefix: str, hostname: str, pid: int, now: datetime, next_in: float) -> None:
    """Write this beat's tick; ``next_in``: the seconds it will sleep before the next."""
    key = prefix + TICK_KEY
    with client.pipeline(transaction=True) as pipe:
        pipe.hset(key, mapping={"hostname": hostname, "pid": pid, "tick_at": now.astimezone(timezone.utc).isoformat(),
                                "next_in": f"{next_in:.3f}"})
        pipe.expire(key, TICK_TTL)
        pipe.execute()


def read_tick(client, prefix: str) -> dict[str, Any] | None:
    """The last tick recorded ({hostname, pid, tick_at (UTC), next_in}), or None."""
    raw = client.hgetall(prefix + TICK_KEY)
    if not raw:
        return None
    data = {k.decode(): v.decode() for k, v in raw.items()}
    return {"hostname": data.get("hostname"), "pid": int(data.get("pid") or 0),
            "tick_at": datetime.fromisoformat(data["tick_at"]), "next_in": float(data.get("next_in") or 0)}
