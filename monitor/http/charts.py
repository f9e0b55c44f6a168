"""Charts as inline SVG drawn on the server: no chart library, no script, nothing fetched at run time.

Pure functions of their numbers; every label is escaped, so a task or queue name is text in the chart.
"""
from __future__ import annotations

from typing import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 600, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 22


def _fmt(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2g}" if value < 1 else f"{value:.1f}"


def line_chart(title: str, x_labels: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]],
               unit: str = "") -> Markup:
    """Up to two series over the same x positions (None: no point); y from 0 to the largest value."""
    values = [v for _, points in series for v in points if v is not None]
    top = max(values) if values else 0.0
    top = top if top > 0 else 1.0
    n = max((len(points) for _, points in series), default=0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2)

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}"/>',
             f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}"/>',
             f'<text x="{LEFT - 4}" y="{TOP + 8}" text-anchor="end">{escape(_fmt(top))}{escape(unit)}</text>',
             f'<text x="{LEFT - 4}" y="{TOP + plot_h}" text-anchor="end">0</text>']
    for k, (name, points) in enumerate(series[:2], start=1):
        runs, current = [], []
        for i, v in enumerate(points):
            if v is None:
                if current:
                    runs.append(current)
                current = []
            else:
                current.append(f"{x(i):.1f},{y(v):.1f}")
        if current:
            runs.append(current)
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle class="s{k}" cx="{cx}" cy="{cy}" r="2"/>')
            else:
                parts.append(f'<polyline class="s{k}" points="{" ".join(run)}"><title>{escape(name)}</title></polyline>')
    if n and x_labels:
        for i in sorted({0, (n - 1) // 2, n - 1}):
            if i < len(x_labels):
                anchor = "start" if i == 0 else "end" if i == n - 1 else "middle"
                parts.append(f'<text x="{x(i):.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}">{escape(x_labels[i])}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(title: str, bars: Sequence[tuple[str, float]], unit: str = "") -> Markup:
    """Horizontal bars, one per label (a task name, a queue), longest value full width."""
    top = max((v for _, v in bars), default=0.0) or 1.0
    row, label_w = 22, 190
    height = max(row * len(bars), row)
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {height}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>"]
    for i, (label, value) in enumerate(bars):
        w = (WIDTH - label_w - 60) * value / top
        short = label if len(label) <= 28 else label[:27] + "…"
        parts.append(f'<text x="{label_w - 6}" y="{i * row + 15}" text-anchor="end">{escape(short)}</text>'
                     f'<rect class="bar" x="{label_w}" y="{i * row + 4}" width="{w:.1f}" height="{row - 8}">'
                     f"<title>{escape(label)}: {escape(_fmt(value))}{escape(unit)}</title></rect>"
                     f'<text x="{label_w + w + 4:.1f}" y="{i * row + 15}">{escape(_fmt(value))}{escape(unit)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
