"""An alert row (and the task run it is about) -> subject, plain text and a simple HTML part.

Secrets are redacted again here, whatever the stored row holds: args, kwargs, the exception,
the traceback and the message all go through ``redact_repr``.
"""
from __future__ import annotations

import html
from datetime import datetime, tzinfo
from typing import Any, Mapping

from tasks.redact import redact_repr

PREFIX = "[taskmon]"
TRACEBACK_LINES = 12
WHAT = {
    "failed": "failed", "timeout": "timed out", "lost": "was lost", "stuck": "is stuck in its queue",
}


def headline(alert: Mapping[str, Any]) -> str:
    """What happened, in a line: the subject without prefix and kind."""
    rule, name, exc = alert["rule"], alert.get("task_name") or "a task", alert.get("exception_type")
    target = alert.get("target") or ""
    if rule in WHAT:
        return f"{name} {WHAT[rule]}" + (f": {exc}" if exc and rule != "stuck" else "")
    if rule == "worker_offline":
        return f"worker {target} offline"
    if rule == "queue_depth":
        return f"queue {target} backlog"
    if rule == "failure_rate":
        return f"failure rate of {target} high"
    if rule == "missed_run":
        return f"periodic task {target} missed its run"
    return f"{rule} {target}".strip()


def subject(alert: Mapping[str, Any]) -> str:
    what = headline(alert)
    if alert["kind"] == "resolved":
        return f"{PREFIX} resolved: {what}"
    if alert["kind"] == "digest":
        return f"{PREFIX} digest: {what} ({alert['occurrences']:,} more, {alert['total_count']:,} in all)"
    return f"{PREFIX} {what}"


def fmt_when(at: datetime | None, tz: tzinfo) -> str:
    if at is None:
        return "-"
    return at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def _excerpt(traceback: str | None) -> str | None:
    if not traceback:
        return None
    lines = traceback.rstrip().splitlines()
    cut = lines[-TRACEBACK_LINES:]
    return ("...\n" if len(lines) > len(cut) else "") + "\n".join(cut)


def fields(alert: Mapping[str, Any], run: Mapping[str, Any] | None, tz: tzinfo, tzname: str) -> list[tuple[str, str]]:
    """The (label, value) lines of the message body, in order; values already redacted."""
    out: list[tuple[str, str]] = []
    detail = alert.get("detail") or {}
    if alert.get("message") and (run is None or alert["message"] != run.get("exception")):
        out.append(("What", redact_repr(alert["message"])))
    if alert.get("task_name"):
        out.append(("Task", alert["task_name"]))
    if alert.get("task_id"):
        out.append(("Task id", alert["task_id"]))
    if run is not None:
        out.append(("State", run.get("state") or "-"))
        if run.get("exception"):
            out.append(("Exception", redact_repr(run["exception"])))
        out.append(("Args", redact_repr(run.get("args")) or "-"))
        out.append(("Kwargs", redact_repr(run.get("kwargs")) or "-"))
        out.append(("Worker", run.get("worker") or "-"))
        out.append(("Queue", run.get("queue") or "-"))
        runtime = run.get("runtime")
        out.append(("Runtime", f"{runtime:.3f} s" if runtime is not None else "-"))
        out.append(("Retries", str(run.get("retries") or 0)))
    for key, value in detail.items():
        if key not in ("task_name", "worker") or run is None:
            out.append((key.replace("_", " ").capitalize(), redact_repr(str(value))))
    when = alert.get("last_seen") if alert["kind"] != "resolved" else alert.get("created_at")
    out.append(("When", f"{fmt_when(when, tz)} ({tzname})"))
    if alert["kind"] == "digest":
        out.append(("Occurrences", f"{alert['occurrences']:,} since the last e-mail, {alert['total_count']:,} in all "
                                   f"since {fmt_when(alert.get('first_seen'), tz)}"))
    elif alert["kind"] == "fire":
        out.append(("Occurrences", f"{alert.get('total_count') or 1:,}"))
    else:
        out.append(("Since", fmt_when(alert.get("first_seen"), tz)))
    if alert.get("task_id"):
        out.append(("More", f"taskmon show {alert['task_id']}"))
    return out


def render(alert: Mapping[str, Any], run: Mapping[str, Any] | None, tz: tzinfo, tzname: str) -> tuple[str, str, str]:
    """(subject, text, html) of an alert e-mail."""
    subj = subject(alert)
    rows = fields(alert, run, tz, tzname)
    traceback = redact_repr(_excerpt(run.get("traceback"))) if run is not None else None
    intro = {"fire": "taskmon alert", "digest": "taskmon digest: more of the same since the last e-mail",
             "resolved": "taskmon: the condition has cleared"}[alert["kind"]]
    width = max(len(label) for label, _ in rows)
    text = [f"{intro}: {headline(alert)}", ""]
    text += [f"{label + ':':<{width + 1}} {value}" for label, value in rows]
    if traceback:
        text += ["", "Traceback (last lines):", traceback]
    text += ["", f"-- taskmon, alert #{alert.get('id', '-')} ({alert['rule']} rule)"]
    esc = html.escape
    body = [f"<h2>{esc(intro)}: {esc(headline(alert))}</h2>", "<table>"]
    body += [f"<tr><th align=\"left\">{esc(label)}</th><td>{esc(value)}</td></tr>" for label, value in rows]
    body.append("</table>")
    if traceback:
        body.append(f"<h3>Traceback (last lines)</h3><pre>{esc(traceback)}</pre>")
    body.append(f"<p><small>taskmon, alert #{esc(str(alert.get('id', '-')))} ({esc(alert['rule'])} rule)</small></p>")
    return subj, "\n".join(text) + "\n", "<html><body>\n" + "\n".join(body) + "\n</body></html>\n"
