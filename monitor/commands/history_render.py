"""Readable text for `history`, `show`, `stats`, `workers`, `queues` and `tail`."""
from __future__ import annotations

from datetime import tzinfo
from typing import Any, Iterable

from monitor.commands.render import NONE, fmt_age, fmt_duration, fmt_number, fmt_rate, fmt_time, one_line, table

EXCEPTION_WIDTH = 60
# Fields `show` prints one per line, in this order; the long texts follow in sections of their own.
SHOW_FIELDS = (
    "task_id", "name", "state", "state_at", "worker", "queue", "routing_key", "exchange", "retries",
    "eta", "expires", "seen_at", "sent_at", "received_at", "started_at", "finished_at", "runtime",
    "queue_wait", "exception_type", "root_id", "parent_id", "truncated", "updated_at",
)
SHOW_TEXTS = ("args", "kwargs", "result", "exception", "traceback")
TIMES = {"state_at", "eta", "expires", "seen_at", "sent_at", "received_at", "started_at", "finished_at", "updated_at"}


def _exception(run: dict[str, Any]) -> str:
    return one_line(run.get("exception") or run.get("exception_type"), EXCEPTION_WIDTH)


def history_table(runs: Iterable[dict[str, Any]], tz: tzinfo) -> str:
    rows = [
        (r["task_id"], r["name"] or NONE, r["state"], r["worker"] or NONE, fmt_time(r["started_at"], tz),
         fmt_duration(r["runtime"]), _exception(r))
        for r in runs
    ]
    return table(("ID", "NAME", "STATE", "WORKER", "STARTED", "RUNTIME", "EXCEPTION"), rows, right=(5,))


def tail_line(run: dict[str, Any], tz: tzinfo) -> str:
    """One line per new or changed run: when it was written, then what it is now."""
    parts = [fmt_time(run["updated_at"], tz), f"{run['state']:<8}", run["task_id"], run["name"] or NONE]
    if run["worker"]:
        parts.append(run["worker"])
    if run["runtime"] is not None:
        parts.append(fmt_duration(run["runtime"]))
    if run["exception"] or run["exception_type"]:
        parts.append(_exception(run))
    return "  ".join(parts)


def _field(name: str, value: Any, tz: tzinfo) -> str:
    if name in TIMES:
        return fmt_time(value, tz)
    if name in ("runtime", "queue_wait"):
        return NONE if value is None else f"{fmt_duration(value)} ({value:.3f}s)"
    return NONE if value is None or value == "" else str(value)


def _run_ref(run: dict[str, Any]) -> str:
    return f"{run['task_id']}  {run['name'] or NONE}  {run['state']}"


def show_text(detail: dict[str, Any], tz: tzinfo, zone: str) -> str:
    run = detail["run"]
    width = max(len(f) for f in SHOW_FIELDS)
    lines = [f"{f:<{width}}  {_field(f, run[f], tz)}" for f in SHOW_FIELDS]
    lines += ["", f"timeline ({zone})", *_timeline_lines(detail, tz)]
    lines += ["", f"workflow ({detail['workflow_size']} run(s) under the same root)", *_workflow_lines(detail)]
    for name in SHOW_TEXTS:
        if run[name]:
            lines += ["", f"{name}:", *("  " + line for line in str(run[name]).rstrip().splitlines())]
    return "\n".join(lines)


def _timeline_lines(detail: dict[str, Any], tz: tzinfo) -> list[str]:
    lines = []
    for step in detail["timeline"]:
        gap = f"+{fmt_duration(step['after'])}" if step["after"] is not None else ""
        lines.append(f"  {step['event']:<9} {fmt_time(step['at'], tz)}  {gap}".rstrip())
    if not lines:
        lines.append("  (no times recorded)")
    if detail["run"]["retries"]:
        lines.append(f"  retried {detail['run']['retries']} time(s); the times above are the latest attempt's")
    return lines


def _workflow_lines(detail: dict[str, Any]) -> list[str]:
    """Root first, down through the ancestors to this run, then its children."""
    run, root_id, lines = detail["run"], detail["root_id"], []
    chain = list(reversed(detail["ancestors"]))
    if root_id and root_id != run["task_id"] and not any(a["task_id"] == root_id for a in chain):
        lines.append(f"  {'root':<9} {_run_ref(detail['root']) if detail['root'] else root_id + '  (not stored)'}")
    if detail["missing_parent"] and detail["missing_parent"] != root_id:
        lines.append(f"  {'ancestor':<9} {detail['missing_parent']}  (not stored)")
    for ancestor in chain:
        label = "root" if ancestor["task_id"] == root_id else "parent" if ancestor is detail["parent"] else "ancestor"
        lines.append(f"  {label:<9} {_run_ref(ancestor)}")
    lines.append(f"  {'this run':<9} {_run_ref(run)}{'  (root)' if root_id == run['task_id'] else ''}")
    lines += [f"  child     {_run_ref(child)}" for child in detail["children"]] or ["  children  none"]
    return lines


def stats_table(stats: dict[str, Any], tz: tzinfo) -> str:
    def row(entry, name):
        s, rt, qw = entry["states"], entry["runtime"], entry["queue_wait"]
        active = s["PENDING"] + s["RECEIVED"] + s["STARTED"]
        return (name, entry["total"], s["SUCCESS"], s["FAILURE"], s["RETRY"], s["REVOKED"] + s["REJECTED"], active,
                fmt_rate(entry["failure_rate"]), fmt_number(entry["throughput_per_min"]),
                fmt_duration(rt["p50"]), fmt_duration(rt["p95"]), fmt_duration(rt["p99"]), fmt_duration(rt["max"]),
                fmt_duration(qw["p50"]), fmt_duration(qw["p95"]), fmt_duration(qw["p99"]))

    headers = ("TASK", "TOTAL", "OK", "FAIL", "RETRY", "REVOKED", "ACTIVE", "FAIL%", "PER MIN",
               "RUN p50", "p95", "p99", "max", "WAIT p50", "p95", "p99")
    rows = [row(t, t["name"] or "(unnamed)") for t in stats["tasks"]] + [row(stats["totals"], "TOTAL")]
    window = f"runs first seen {fmt_time(stats['since'], tz)} .. {fmt_time(stats['until'], tz)}"
    return window + "\n" + table(headers, rows, right=range(1, len(headers)))


def workers_table(workers: list[dict[str, Any]], tz: tzinfo) -> str:
    rows = [
        (w["hostname"], w["state"], fmt_age(w["heartbeat_age"]), fmt_time(w["last_heartbeat"], tz), w["active"],
         w["processed"], w["loadavg"] or NONE, w["software"] or NONE)
        for w in workers
    ]
    return table(("WORKER", "STATE", "HEARTBEAT", "LAST SEEN", "ACTIVE", "PROCESSED", "LOAD", "SOFTWARE"), rows,
                 right=(4, 5))


def queues_table(queues: list[dict[str, Any]]) -> str:
    def priorities(q):
        if not q["by_priority"]:
            return NONE
        return " ".join(f"{p}:{n}" for p, n in sorted(q["by_priority"].items(), key=lambda kv: int(kv[0])))

    rows = [
        (q["name"], NONE if q["messages"] is None else q["messages"], NONE if q["consumers"] is None else q["consumers"],
         priorities(q), "no such queue" if q["exists"] is False else "")
        for q in queues
    ]
    return table(("QUEUE", "MESSAGES", "CONSUMERS", "BY PRIORITY", ""), rows, right=(1, 2))
