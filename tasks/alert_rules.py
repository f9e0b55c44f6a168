"""Alert rules as configured in the ``[alerts]`` table, with sensible defaults on.

Each rule has its own sub-table (``[alerts.failed]``, ``[alerts.queue_depth]`` ...); a rule
not named keeps its defaults, ``enabled = false`` switches one off, and ``enabled = false``
directly under ``[alerts]`` switches them all off.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

# Occurrence rules: every matching event counts (grouped and throttled).
OCCURRENCE_RULES = ("failed", "timeout", "lost", "stuck")
# Condition rules: a state that holds until it clears, then one "resolved" message.
CONDITION_RULES = ("worker_offline", "queue_depth", "failure_rate", "missed_run")
RULE_NAMES = OCCURRENCE_RULES + CONDITION_RULES
# Task names no task-based rule ever looks at: the alert task's own failures must not alert.
OWN_TASKS = ("alerts.*", "tasks.alerts.*")
DEFAULT_QUEUES = ("celery", "default", "high_priority", "low_priority", "finance", "reports", "email",
                  "maintenance", "alerts")


class RuleError(ValueError):
    """An [alerts] entry taskmon cannot use; the message names it."""


@dataclass(frozen=True)
class Rule:
    name: str
    enabled: bool = True
    recipients: tuple[str, ...] = ()  # empty: alert_recipients
    names: tuple[str, ...] = ()  # task name globs; empty: every task (failed, timeout, lost, stuck, failure_rate)
    threshold: int = 1000  # queue_depth: messages waiting
    for_seconds: float = 300.0  # queue_depth: how long above the threshold before it fires
    queues: tuple[str, ...] = DEFAULT_QUEUES  # queue_depth
    percent: float = 50.0  # failure_rate
    window_seconds: float = 600.0  # failure_rate
    min_count: int = 20  # failure_rate: fewer finished runs in the window never fire
    grace_seconds: float = 600.0  # missed_run: how late a periodic task may be


# Which options each rule reads (others are refused, so a typo is an error, not a silent default).
OPTIONS = {
    "failed": ("names",), "timeout": ("names",), "lost": ("names",), "stuck": ("names",),
    "worker_offline": (),
    "queue_depth": ("threshold", "for_seconds", "queues"),
    "failure_rate": ("names", "percent", "window_seconds", "min_count"),
    "missed_run": ("grace_seconds",),
}


def default_rules() -> tuple[Rule, ...]:
    return tuple(Rule(name) for name in RULE_NAMES)


def parse_rules(raw: Any) -> tuple[Rule, ...]:
    """The [alerts] table (or the same as a JSON string, from the environment) -> every rule."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError as exc:
            raise RuleError(f"alerts: expected a JSON object like {{\"failed\": {{\"names\": [\"billing.*\"]}}}}: {exc}") from None
    if not isinstance(raw, Mapping):
        raise RuleError(f"alerts: expected a table of rules, got {raw!r}")
    all_on = raw.get("enabled", True)
    if not isinstance(all_on, bool):
        raise RuleError(f"alerts: enabled: expected true or false, got {all_on!r}")
    unknown = set(raw) - set(RULE_NAMES) - {"enabled"}
    if unknown:
        raise RuleError(f"alerts: unknown rule {sorted(unknown)[0]!r} (rules: {', '.join(RULE_NAMES)})")
    return tuple(_rule(name, raw.get(name, {}), all_on) for name in RULE_NAMES)


def _rule(name: str, table: Any, all_on: bool) -> Rule:
    if not isinstance(table, Mapping):
        raise RuleError(f"alerts.{name}: expected a table, got {table!r}")
    allowed = {"enabled", "recipients", *OPTIONS[name]}
    for key in table:
        if key not in allowed:
            raise RuleError(f"alerts.{name}: unknown option {key!r} (options: {', '.join(sorted(allowed))})")
    values: dict[str, Any] = {"enabled": all_on}
    for key, raw in table.items():
        default = getattr(Rule, key) if key != "enabled" else True
        values[key] = _coerce(f"alerts.{name}.{key}", raw, default)
    if not all_on:
        values["enabled"] = False
    rule = Rule(name, **values)
    for addr in rule.recipients:
        if "@" not in addr:
            raise RuleError(f"alerts.{name}.recipients: {addr!r} is not an e-mail address")
    for key in ("for_seconds", "window_seconds", "grace_seconds", "percent"):
        if getattr(rule, key) < 0:
            raise RuleError(f"alerts.{name}.{key}: must be 0 or more, got {getattr(rule, key)!r}")
    if rule.window_seconds <= 0:
        raise RuleError(f"alerts.{name}.window_seconds: must be more than 0")
    if rule.min_count < 1 or rule.threshold < 0:
        raise RuleError(f"alerts.{name}: min_count must be 1 or more and threshold 0 or more")
    return rule


def _coerce(where: str, raw: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
    elif isinstance(default, tuple):
        items = raw.split(",") if isinstance(raw, str) else raw
        if isinstance(items, (list, tuple)) and all(isinstance(i, str) for i in items):
            return tuple(i.strip() for i in items if i.strip())
    elif isinstance(default, (int, float)) and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if isinstance(default, int) and not isinstance(default, bool):
            if float(raw) == int(raw):
                return int(raw)
        else:
            return float(raw)
    kind = {bool: "true or false", tuple: "a list of strings", int: "a whole number", float: "a number"}[type(default)]
    raise RuleError(f"{where}: expected {kind}, got {raw!r}")


def rules_of(settings) -> dict[str, Rule]:
    """The effective rules by name: the configured ones, or the defaults."""
    return {r.name: r for r in (settings.alerts or default_rules())}


def recipients(rule: Rule, settings) -> tuple[str, ...]:
    return rule.recipients or tuple(settings.alert_recipients)


def describe(rules) -> str:
    """One line for `taskmon config`: the enabled rules."""
    on = [r.name for r in rules if r.enabled]
    return ",".join(on) if on else "off"


def as_dict(rule: Rule) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(rule).items()}

