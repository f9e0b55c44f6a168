"""Worker control (admin): pool grow/shrink/autoscale, shutdown, add/cancel a consumer, rate and time limits;
and purging a queue. One worker at a time, through monitor.broker.control (as `taskmon worker`); audited."""
from __future__ import annotations

from typing import Any

from fastapi import Body, Depends, Path, Query, Request
from pydantic import BaseModel, Field, model_validator

from monitor.broker.control import control, purge
from monitor.http.audit import audited
from monitor.http.auth import allow
from monitor.http.models import RequestBody
from monitor.http.payload import json_response
from monitor.http.problems import api_router, bad_request, not_found, responses
from monitor.http.replaying import client

router = api_router("worker control")
HOSTNAME = Path(..., min_length=1, max_length=255, description="The worker, e.g. celery@host.")
ADMIN = [Depends(allow("admin"))]
WAIT = Query(2.0, gt=0, le=10, description="Seconds to wait for the worker's answer.")


class ControlReply(BaseModel):
    worker: str
    command: str
    reply: Any = Field(None, description="What the worker answered.")


class PoolSize(RequestBody):
    n: int = Field(1, ge=1, le=64, description="Processes to add or remove.")


class Autoscale(RequestBody):
    max: int = Field(..., ge=1, le=256)
    min: int = Field(0, ge=0, le=256)

    @model_validator(mode="after")
    def min_below_max(self):
        if self.min > self.max:
            raise ValueError("min must not exceed max")
        return self


class Consumer(RequestBody):
    queue: str = Field(..., min_length=1, max_length=255, pattern=r"^\S+$")


class RateLimit(RequestBody):
    task_name: str = Field(..., min_length=1, max_length=255, pattern=r"^\S+$")
    rate: str = Field(..., pattern=r"^(\d+(\.\d+)?(/[smh])?|0)$", description='e.g. "10/m", "2/s", "100/h"; "0": none.')


class TimeLimit(RequestBody):
    task_name: str = Field(..., min_length=1, max_length=255, pattern=r"^\S+$")
    soft: float | None = Field(None, gt=0, le=10**6, description="Soft time limit in seconds.")
    hard: float | None = Field(None, gt=0, le=10**6, description="Hard time limit in seconds.")

    @model_validator(mode="after")
    def soft_below_hard(self):
        if self.soft is not None and self.hard is not None and self.soft > self.hard:
            raise ValueError("soft must not exceed hard")
        return self


def _run(request: Request, hostname: str, command: str, arguments: dict[str, Any], timeout: float):
    action = command.replace("_", "-")  # monitor.broker.control's word for it, as `taskmon worker` takes it
    with audited(request, f"worker.{command}", hostname) as entry:
        entry.detail = dict(arguments)
        answer = control(client(request), action, [hostname], timeout=timeout or 1.0, **arguments)
        if hostname in answer.missing or hostname not in answer.replies:
            raise not_found(f"no worker {hostname!r} answered {command} within {timeout or 1.0:g}s: is it running? "
                            f"GET /api/v1/workers lists the workers seen")
        reply = answer.replies[hostname]
        if isinstance(reply, dict) and "error" in reply:
            raise bad_request(f"{hostname} refused {command}: {reply['error']}")
    return json_response({"worker": hostname, "command": command, "reply": reply}, request.app.state.settings.tz)


CONTROL = dict(response_model=ControlReply, dependencies=ADMIN, responses=responses(404))


@router.post("/workers/{hostname}/pool/grow", summary="Add processes to the worker's pool", **CONTROL)
def pool_grow(request: Request, hostname: str = HOSTNAME, body: PoolSize = Body(default_factory=PoolSize),
              timeout: float = WAIT):
    return _run(request, hostname, "pool_grow", {"n": body.n}, timeout)


@router.post("/workers/{hostname}/pool/shrink", summary="Remove processes from the worker's pool", **CONTROL)
def pool_shrink(request: Request, hostname: str = HOSTNAME, body: PoolSize = Body(default_factory=PoolSize),
                timeout: float = WAIT):
    return _run(request, hostname, "pool_shrink", {"n": body.n}, timeout)


@router.post("/workers/{hostname}/pool/autoscale", summary="Set the worker's autoscale bounds", **CONTROL)
def autoscale(request: Request, body: Autoscale, hostname: str = HOSTNAME,
              timeout: float = WAIT):
    return _run(request, hostname, "autoscale", {"max": body.max, "min": body.min}, timeout)


@router.post("/workers/{hostname}/shutdown", summary="Shut the worker down (warm: running tasks finish)", **CONTROL)
def shutdown(request: Request, hostname: str = HOSTNAME):
    return _run(request, hostname, "shutdown", {}, 0)


@router.post("/workers/{hostname}/consumers/add", summary="Make the worker consume from a queue too", **CONTROL)
def add_consumer(request: Request, body: Consumer, hostname: str = HOSTNAME,
                 timeout: float = WAIT):
    return _run(request, hostname, "add_consumer", {"queue": body.queue}, timeout)


@router.post("/workers/{hostname}/consumers/cancel", summary="Make the worker stop consuming from a queue",
             **CONTROL)
def cancel_consumer(request: Request, body: Consumer, hostname: str = HOSTNAME,
                    timeout: float = WAIT):
    return _run(request, hostname, "cancel_consumer", {"queue": body.queue}, timeout)


@router.post("/workers/{hostname}/rate-limit", summary="Set a task's rate limit on the worker", **CONTROL)
def rate_limit(request: Request, body: RateLimit, hostname: str = HOSTNAME,
               timeout: float = WAIT):
    return _run(request, hostname, "rate_limit", {"task_name": body.task_name, "rate_limit": body.rate}, timeout)


@router.post("/workers/{hostname}/time-limit", summary="Set a task's soft and hard time limits on the worker",
             **CONTROL)
def time_limit(request: Request, body: TimeLimit, hostname: str = HOSTNAME,
               timeout: float = WAIT):
    arguments = {"task_name": body.task_name, "soft": body.soft, "hard": body.hard}
    return _run(request, hostname, "time_limit", arguments, timeout)


class Purged(BaseModel):
    queue: str
    purged: int


@router.post("/queues/{name}/purge", response_model=Purged, dependencies=ADMIN, responses=responses(404),
             summary="Delete every message waiting in a queue (Redis: every priority step)")
def purge_queue(request: Request, name: str = Path(..., min_length=1, max_length=255)):
    with audited(request, "queue.purge", name) as entry:
        (counted,) = purge(client(request), [name])
        if counted.exists is False:
            raise not_found(f"no queue {name!r} on the broker")
        count = counted.messages
        entry.detail = {"purged": count, "by_priority": counted.by_priority}
    return json_response({"queue": name, "purged": count}, request.app.state.settings.tz)
