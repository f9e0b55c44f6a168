"""Pure functions from stored rows and ``now`` to what the rules see: occurrences and conditions.

An *occurrence* is one event that counts (a task failed for good, timed out, was lost, is
stuck); a *condition* is a state that holds until it clears (a worker offline, a deep queue,
a high failure rate, a periodic task overdue).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, Iterable, Mapping

from monitor.detectors.lost import OFFLINE, worker_presence
from tasks.alert_rules import OWN_TASKS, Rule

# Deaths older than this when first seen are history being caught up with, not news.
STALE_OCCURRENCE = timedelta(hours=1)
# A dead letter without its task's name waits this long for it before it is alerted on (grouped by name):
# task-failed carries no name, and the task-received of a killed daemon's pending stream entries is claimed
# by another daemon after 15 s of silence, within 5 s more.
NAME_GRACE = timedelta(seconds=30)
# A worker gone for longer than this before taskmon looks is not reported (old history).
STALE_WORKER = timedelta(hours=24)
REASON_RULES = {"failure": "failed", "rejected": "failed", "timeout": "timeout", "lost": "lost"}
FAILED_STATES = ("FAILURE", "TIMEOUT", "LOST")
# The failure-rate window's runs that have ended: succeeded, or failed as FAILED_STATES says.
FINISHED_STATES = ("SUCCESS",) + FAILED_STATES


@dataclass(frozen=True)
class Occurrence:
    rule: str
    task_name: str | None
    exception_type: str | None
    task_id: str
    at: datetime
    message: str

    @property
    def key(self) -> str:
        return f"{self.rule}:{self.task_name or '-'}:{self.exception_type or '-'}"


@dataclass(frozen=True)
class Condition:
    rule: str
    target: str  # worker hostname, queue, task name, schedule name
    message: str
    since: datetime | None = None  # when it began, if known
    task_name: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.rule}:{self.target}"


def is_own_task(name: str | None) -> bool:
    """The alert task itself: never alerted about, or a failing SMTP server would mail about itself."""
    return bool(name) and any(fnmatchcase(name, glob) for glob in OWN_TASKS)


def name_selected(rule: Rule, name: str | None) -> bool:
    if is_own_task(name):
        return False
    return not rule.names or (name is not None and any(fnmatchcase(name, g) for g in rule.names))


def awaiting_name(letter: Mapping[str, Any], now: datetime) -> bool:
    return letter.get("name") is None and letter["dead_at"] > now - NAME_GRACE


def dead_letter_occurrences(letters: Iterable[Mapping[str, Any]], rules: Mapping[str, Rule],
                            now: datetime) -> list[Occurrence]:
    """Dead letters the detector sweep just wrote -> failed / timeout / lost occurrences."""
    out = []
    for letter in letters:
        rule = rules.get(REASON_RULES.get(letter["reason"], ""))
        if rule is None or not rule.enabled or not name_selected(rule, letter.get("name")):
            continue
        if letter["dead_at"] < now - STALE_OCCURRENCE:
            continue
        out.append(Occurrence(rule.name, letter.get("name"), letter.get("exception_type"), letter["task_id"],
                              letter["dead_at"], letter.get("exception") or letter["reason"]))
    return out


def stuck_occurrences(stuck: Iterable[Any], rules: Mapping[str, Rule], now: datetime) -> list[Occurrence]:
    """Tasks the sweep just flagged stuck (monitor.detectors.StuckTask)."""
    rule = rules.get("stuck")
    if rule is None or not rule.enabled:
        return []
    return [Occurrence("stuck", s.name, None, s.task_id, s.at, s.message) for s in stuck
            if name_selected(rule, s.name) and s.at >= now - STALE_OCCURRENCE]


def worker_conditions(workers: Iterable[Mapping[str, Any]], now: datetime, *, multiple: float,
                      watch_since: datetime | None) -> list[Condition]:
    """Workers offline (they said goodbye) or lost (heartbeats stopped, e.g. killed with -9), by the
    detectors' own rule (monitor.detectors.lost.worker_presence)."""
    out = []
    for w in workers:
        presence = worker_presence(w, now, multiple=multiple, watch_since=watch_since)
        if presence.gone is None:
            continue
        last = presence.gone.last_heartbeat
        if last < now - STALE_WORKER:
            continue
        how = "offline: it shut down" if presence.state == OFFLINE else "lost: its heartbeats stopped"
        out.append(Condition("worker_offline", w["hostname"], f"worker {w['hostname']} is {how}", since=last,
                             detail={"worker": w["hostname"], "status": presence.state,
                                     "last_heartbeat": last.isoformat()}))
    return out


def queue_conditions(depths: Iterable[Mapping[str, Any]], rule: Rule) -> list[Condition]:
    """Queues with more than ``threshold`` messages waiting (how long is grouping's business).

    A queue RabbitMQ does not have (``messages`` None) has nothing waiting.
    """
    return [Condition("queue_depth", q["name"], f"queue {q['name']} has {q['messages']:,} messages waiting "
                      f"(more than {rule.threshold:,})", detail={"queue": q["name"], "messages": q["messages"],
                                                                 "threshold": rule.threshold})
            for q in depths if (q["messages"] or 0) > rule.threshold]


def rate_conditions(counts: Mapping[str, Mapping[str, int]], rule: Rule) -> list[Condition]:
    """Task names whose finished runs in the window failed more often than ``percent``.

    ``counts``: {name: {"total": runs first seen in the window that have ended, "failed": of which
    FAILURE/TIMEOUT/LOST}} (storage.rollup_stats.finished_counts).
    """
    out = []
    for name, c in sorted(counts.items()):
        total, failed = c["total"], c["failed"]
        if not name_selected(rule, name) or total < rule.min_count:
            continue
        rate = 100.0 * failed / total
        if rate > rule.percent:
            window = f"{rule.window_seconds / 60:g} min"
            out.append(Condition("failure_rate", name, f"{name}: {rate:.0f}% of {total:,} runs failed in the last "
                                 f"{window} (alert above {rule.percent:g}%)", task_name=name,
                                 detail={"task_name": name, "total": total, "failed": failed,
                                         "percent": round(rate, 1), "window_seconds": rule.window_seconds}))
    return out


def missed_runs(schedules: Iterable[Mapping[str, Any]], rule: Rule, now: datetime) -> list[Condition]:
    """Periodic tasks whose next run after ``last_run_at`` (``due_at``) is overdue by more than the grace.

    Rows that never ran are left out: nothing shows that beat runs them at all.
    """
    out = []
    grace = timedelta(seconds=rule.grace_seconds)
    for row in schedules:
        due, last = row.get("due_at"), row.get("last_run_at")
        if not row.get("enabled", True) or due is None or last is None or now <= due + grace:
            continue
        late = (now - due).total_seconds()
        out.append(Condition("missed_run", row["name"],
                             f"periodic task {row['name']} ({row['task']}) was due at {due:%Y-%m-%d %H:%M:%S} UTC "
                             f"and has not run ({late:.0f}s late, grace {rule.grace_seconds:g}s)",
                             since=due, task_name=row["task"],
                             detail={"schedule": row["name"], "task_name": row["task"], "due_at": due.isoformat(),
                                     "last_run_at": last.isoformat()}))
    return out


def drop_covered_rates(conditions: Iterable[Condition], covered: set[str], open_keys: set[str]) -> list[Condition]:
    """A high failure rate of a task whose failures are already being mailed (an open failed, timeout
    or lost group: first e-mail, then digests with counts) would only repeat them: it is not raised
    again. A failure_rate alert already open stays as it is until it resolves."""
    return [c for c in conditions
            if c.rule != "failure_rate" or c.task_name not in covered or c.key in open_keys]
