"""The pure plan: (open groups, new occurrences, current conditions, now) -> notifications.

A group is rule + task name + exception type (worker hostname, queue, task name or schedule for
condition rules). The first occurrence of a group fires at once; later ones are counted and
mailed as one digest at most every ``digest_interval``; a group with nothing new for that long
closes quietly, so the next occurrence fires at once again. A condition fires once (a queue
only after it held ``for_seconds``) and sends one "resolved" when it clears.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from monitor.alerts.conditions import Condition, Occurrence
from tasks.alert_rules import OCCURRENCE_RULES

GROUP_STATES = ("watching", "open", "resolved")  # watching: condition seen, not held long enough yet


@dataclass
class Group:
    key: str
    rule: str
    status: str
    since: datetime
    first_seen: datetime
    last_seen: datetime
    task_name: str | None = None
    exception_type: str | None = None
    target: str | None = None
    total_count: int = 0
    pending_count: int = 0  # counted, not mailed yet: the next digest's count
    notified_at: datetime | None = None
    last_task_id: str | None = None
    message: str | None = None
    resolved_at: datetime | None = None


@dataclass(frozen=True)
class Action:
    kind: str  # fire, digest, resolved
    group: Group  # as it is after the action
    count: int  # occurrences this message reports
    task_id: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    groups: dict[str, Group] = field(default_factory=dict)  # every group that changed, by key


def plan(groups: Mapping[str, Group], occurrences: Iterable[Occurrence], conditions: Iterable[Condition], *,
         evaluated: Iterable[str], holds: Mapping[str, float], now: datetime,
         digest_interval: timedelta) -> Plan:
    """What to mail and how the groups change. ``evaluated``: the condition rules whose input was read
    this time (a rule whose input could not be read neither fires nor resolves)."""
    out = Plan()

    def current(key: str) -> Group | None:
        if key in out.groups:
            return out.groups[key]
        g = groups.get(key)
        return dataclasses.replace(g) if g is not None else None

    def act(kind: str, g: Group, count: int, task_id: str | None = None, detail=None) -> None:
        out.actions.append(Action(kind, dataclasses.replace(g), count, task_id, dict(detail or {})))

    for occ in sorted(occurrences, key=lambda o: (o.at, o.task_id)):
        g = current(occ.key)
        if g is None or g.status != "open":
            g = Group(occ.key, occ.rule, "open", since=occ.at, first_seen=occ.at, last_seen=occ.at,
                      task_name=occ.task_name, exception_type=occ.exception_type, total_count=1, notified_at=now,
                      last_task_id=occ.task_id, message=occ.message)
            act("fire", g, 1, occ.task_id)
        else:
            g.total_count += 1
            g.pending_count += 1
            g.last_seen = max(g.last_seen, occ.at)
            g.last_task_id, g.message = occ.task_id, occ.message
        out.groups[occ.key] = g

    for key in sorted(set(groups) | set(out.groups)):
        g = current(key)
        if g.rule not in OCCURRENCE_RULES or g.status != "open":
            continue
        quiet_since = max(g.notified_at or g.since, g.last_seen)
        if g.pending_count and now - (g.notified_at or g.since) >= digest_interval:
            count, g.pending_count, g.notified_at = g.pending_count, 0, now
            act("digest", g, count, g.last_task_id)
            out.groups[key] = g
        elif not g.pending_count and now - quiet_since >= digest_interval:
            g.status, g.resolved_at = "resolved", now
            out.groups[key] = g

    conditions = list(conditions)
    for rule in evaluated:
        active = {c.key: c for c in conditions if c.rule == rule}
        hold = timedelta(seconds=holds.get(rule, 0))
        for key, c in sorted(active.items()):
            g = current(key)
            if g is None or g.status == "resolved":
                g = Group(key, rule, "watching", since=now if c.since is None or hold else c.since,
                          first_seen=now, last_seen=now, task_name=c.task_name, target=c.target, total_count=1,
                          message=c.message)
            else:
                g.last_seen, g.message = now, c.message
            if g.status == "watching" and now - g.since >= hold:
                g.status, g.notified_at = "open", now
                act("fire", g, 1, detail=c.detail)
            out.groups[key] = g
        for key in sorted(set(groups) | set(out.groups)):
            g = current(key)
            if g.rule != rule or key in active or g.status == "resolved":
                continue
            if g.status == "open":
                g.status, g.resolved_at, g.notified_at = "resolved", now, now
                act("resolved", g, 0)
            else:
                g.status, g.resolved_at = "resolved", now
            out.groups[key] = g
    return out
