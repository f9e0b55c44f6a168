"""A report as text, Markdown, HTML, JSON or CSV: every format renders the same sections."""
from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

FORMATS = ("text", "md", "json", "csv")

Section = tuple[str, list[str], list[list[Any]]]


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"


def _max(row: dict[str, Any]) -> str:
    """The maximum runtime: exact, or the histogram bucket it is in when the report is from the rollups."""
    bounds = row.get("max_runtime_bounds")
    if bounds is None:
        return f"{row['max_runtime']:.3f}"
    return f"<= {bounds[1]:g}" if bounds[1] is not None else f"> {bounds[0]:g}"


def title(report: dict[str, Any]) -> str:
    p = report["period"]
    return f"taskmon {report['kind']} report {p['label']} ({p['start']} to {p['end']}, {p['timezone']})"


def sections(report: dict[str, Any]) -> list[Section]:
    t = report["totals"]
    totals = [["tasks", t["tasks"]], ["succeeded", t["succeeded"]], ["failed", t["failed"]],
              ["failure rate", _pct(t["failure_rate"])], ["retries", t["retries"]]]
    totals += [[f"state {state}", n] for state, n in report["states"].items()]
    return [
        ("Totals", ["", "count"], totals),
        ("Top failing tasks", ["task", "runs", "failures", "failure rate"],
         [[r["task"], r["runs"], r["failures"], _pct(r["failure_rate"])] for r in report["top_failing"]]),
        ("Top exceptions", ["exception", "count", "tasks"],
         [[r["exception"], r["count"], r["tasks"]] for r in report["top_exceptions"]]),
        ("Slowest tasks", ["task", "runs", "avg s", "max s"],
         [[r["task"], r["runs"], f"{r['avg_runtime']:.3f}", _max(r)] for r in report["slowest"]]),
        ("Busiest queues", ["queue", "tasks", "failures"],
         [[r["queue"], r["tasks"], r["failures"]] for r in report["queues"]]),
        ("Busiest workers", ["worker", "tasks", "failures"],
         [[r["worker"], r["tasks"], r["failures"]] for r in report["workers"]]),
    ]


def render(report: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=True)
    if fmt == "csv":
        return _csv(report)
    if fmt == "md":
        return _markdown(report)
    if fmt == "html":
        return _html(report)
    if fmt == "text":
        return _text(report)
    raise ValueError(f"unknown report format {fmt!r}: one of {', '.join(FORMATS)}")


def _text(report: dict[str, Any]) -> str:
    out = [title(report)]
    for name, headers, rows in sections(report):
        out += ["", name]
        if not rows:
            out.append("  (none)")
            continue
        cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
        for row in cells:
            out.append("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
    return "\n".join(out) + "\n"


def _markdown(report: dict[str, Any]) -> str:
    out = [f"# {title(report)}"]
    for name, headers, rows in sections(report):
        out += ["", f"## {name}", ""]
        if not rows:
            out.append("(none)")
            continue
        out.append("| " + " | ".join(headers) + " |")
        out.append("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |")
        out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def _html(report: dict[str, Any]) -> str:
    esc = lambda v: html.escape(str(v))  # noqa: E731
    out = [f"<h1>{esc(title(report))}</h1>"]
    for name, headers, rows in sections(report):
        out.append(f"<h2>{esc(name)}</h2>")
        if not rows:
            out.append("<p>(none)</p>")
            continue
        out.append("<table border=\"1\" cellpadding=\"4\" cellspacing=\"0\">")
        out.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in headers) + "</tr>")
        out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
        out.append("</table>")
    return "<html><body>\n" + "\n".join(out) + "\n</body></html>\n"


def _csv(report: dict[str, Any]) -> str:
    """Long format, one value per line: section,item,metric,value (raw numbers, not percentages)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["section", "item", "metric", "value"])
    for metric, value in report["totals"].items():
        w.writerow(["totals", "", metric, "" if value is None else value])
    for state, n in report["states"].items():
        w.writerow(["states", state, "count", n])
    keyed = {"top_failing": "task", "top_exceptions": "exception", "slowest": "task", "queues": "queue", "workers": "worker"}
    for section, key in keyed.items():
        for row in report[section]:
            for metric, value in row.items():
                if metric != key:
                    w.writerow([section, row[key], metric, "" if value is None else value])
    return buf.getvalue()
