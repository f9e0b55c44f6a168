"""The API's response types, and the base of its request bodies: the OpenAPI document is generated from these."""
from __future__ import annotations

import types
import typing
from datetime import datetime
from typing import Any

from pydantic import BaseModel, model_validator


def _is_number(annotation) -> bool:
    """int or float, alone or in a union (not bool, which is an int to Python)."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, typing.Annotated):
        return any(_is_number(a) for a in typing.get_args(annotation))
    return False


class RequestBody(BaseModel):
    """A request's JSON body: JSON true/false is refused where a number is asked for (pydantic
    would take it for 1/0)."""

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_not_booleans(cls, data):
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if isinstance(data.get(field.alias or name), bool) and _is_number(field.annotation):
                    raise ValueError(f"{name}: a number, not true or false")
        return data


class RunSummary(BaseModel):
    task_id: str
    name: str | None
    state: str
    worker: str | None
    queue: str | None
    seen_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    runtime: float | None
    queue_wait: float | None
    retries: int | None
    exception_type: str | None
    exception: str | None
    updated_at: datetime | None


class RunList(BaseModel):
    count: int
    results: list[RunSummary]
    next_cursor: str | None = None


class Run(RunSummary):
    state_at: datetime | None
    args: str | None
    kwargs: str | None
    result: str | None
    traceback: str | None
    routing_key: str | None
    exchange: str | None
    root_id: str | None
    parent_id: str | None
    eta: datetime | None
    expires: datetime | None
    sent_at: datetime | None
    received_at: datetime | None
    truncated: bool | None
    received_attempt: int | None
    received_first_at: datetime | None
    redelivered: bool | None
    stuck_at: datetime | None
    replay_of: str | None


class TimelineStep(BaseModel):
    event: str
    at: datetime
    after: float | None


class Attempt(BaseModel):
    """One attempt of a retried task as its row tells it: earlier attempts ended in a retry and
    their own times and exceptions are not stored (known false); the latest has the row's times."""

    number: int
    outcome: str | None
    known: bool
    steps: list[TimelineStep]
    first_seen: datetime | None
    exception: str | None = None


class RunDetail(BaseModel):
    run: Run
    timeline: list[TimelineStep]
    attempts: list[Attempt]
    parent: RunSummary | None
    ancestors: list[RunSummary]
    missing_parent: str | None
    root_id: str | None
    root: RunSummary | None
    children: list[RunSummary]
    workflow_size: int


JSONValue = Any
