"""The history bench/query.py loads: task runs made by one INSERT ... SELECT per chunk, in the database.

Ten million rows made one at a time in Python cost ~100-200 us each before the database sees them;
made in SQL from a series of integers they cost what the INSERT costs. Every random draw is a hash
of the row number (the same arithmetic on SQLite and PostgreSQL, integers below 2**63), so both
databases filled with the same end time hold the same runs: 13 task names with realistic shares, runtimes log-normal around each
name's median, queue waits mostly exponential with a 2% tail of 10-600 s, ~4% failures, 1% retries,
0.5% revoked, the last two minutes partly unfinished, and 15% of the runs children of a run shortly
before them (parent and root links, two levels deep).
"""
from __future__ import annotations

import math
from datetime import datetime, timezone

# (name, share of runs, median runtime in seconds, queue)
TASKS = [
    ("tasks.notifications.send_notification_email", 0.30, 0.4, "email"),
    ("tasks.finance.check_pending_bills", 0.15, 0.8, "finance"),
    ("tasks.data.process_event", 0.20, 0.05, "default"),
    ("tasks.finance.send_bill_reminders", 0.08, 1.5, "finance"),
    ("tasks.maintenance.cleanup_cache", 0.06, 2.0, "default"),
    ("tasks.data.export_data", 0.05, 30.0, "default"),
    ("tasks.reports.generate_hourly_report", 0.05, 12.0, "reports"),
    ("tasks.reports.generate_daily_report", 0.04, 60.0, "reports"),
    ("tasks.notifications.cleanup_old_notifications", 0.03, 5.0, "default"),
    ("tasks.finance.calculate_monthly_revenue", 0.02, 45.0, "finance"),
    ("tasks.maintenance.backup_database", 0.015, 300.0, "default"),
    ("tasks.reports.generate_weekly_report", 0.004, 120.0, "reports"),
    ("tasks.reports.generate_monthly_report", 0.001, 600.0, "reports"),
]
WORKERS = 8  # celery@worker-1 .. celery@worker-8
EXCEPTIONS = [("ConnectionError", "ConnectionError('SMTP server went away')"),
              ("TimeoutError", "TimeoutError('upstream timed out after 30s')"),
              ("ValueError", "ValueError('invalid account id')"),
              ("SoftTimeLimitExceeded", "SoftTimeLimitExceeded()")]
TRACEBACK = "Traceback (most recent call last):\n" + "".join(
    f'  File "/app/tasks/module_{i}.py", line {10 * i}, in step_{i}\n    result = step_{i + 1}(payload)\n' for i in range(8))
P = 2147483647  # 2**31 - 1: hashes stay below it, their products below 2**62


def _hash(k: int, i: str = "i") -> str:
    """An integer in [0, P) that looks random, from the row number and the draw's number k."""
    a, b, c, d = 48271 + 7919 * k, 1013904223 + 104729 * k, 69621 + 15485863 * k % 1000003, 12345 + 999983 * k
    x = f"(({i} * {a} + {b}) % {P})"
    return f"(((({x} * {x}) % {P}) * {c} + {d}) % {P})"  # squared: draws of one row are not linear in each other


def _u(k: int, i: str = "i") -> str:
    """A uniform draw in [0, 1)."""
    return f"(CAST({_hash(k, i)} AS DOUBLE PRECISION) / {P})"


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _pick(u: str, choices: list[tuple[float, str]]) -> str:
    """CASE choosing among SQL expressions by cumulative share of the draw u."""
    parts, acc = [], 0.0
    for share, expr in choices[:-1]:
        acc += share
        parts.append(f"WHEN {u} < {acc!r} THEN {expr}")
    return f"(CASE {' '.join(parts)} ELSE {choices[-1][1]} END)"


def _hex(dialect: str, value: str, width: int) -> str:
    if dialect == "sqlite":
        return f"printf('%0{width}x', {value})"
    return f"lpad(to_hex({value}), {width}, '0')"


def _task_id(dialect: str, i: str) -> str:
    """A version-4-looking UUID; the row number is its last 12 hex digits, so ids never collide."""
    parts = [_hex(dialect, _hash(20, i), 8), _hex(dialect, f"{_hash(21, i)} % 65536", 4),
             _hex(dialect, f"16384 + {_hash(22, i)} % 4096", 4), _hex(dialect, f"32768 + {_hash(23, i)} % 16384", 4),
             _hex(dialect, i, 12)]
    return " || '-' || ".join(parts)


def _time(dialect: str, micros: str) -> str:
    """A UTC time from epoch microseconds, stored as UTCDateTime stores it."""
    if dialect == "sqlite":
        return (f"(strftime('%Y-%m-%d %H:%M:%S', ({micros}) / 1000000, 'unixepoch') "
                f"|| printf('.%06d', ({micros}) % 1000000))")
    return f"(timestamptz 'epoch' + ({micros}) * interval '1 microsecond')"


def _round(dialect: str, value: str, places: int) -> str:
    return f"round({value}, {places})" if dialect == "sqlite" else f"round(({value})::numeric, {places})::float8"


def fill_sql(dialect: str, n: int, now: datetime, days: int, lo: int, hi: int) -> str:
    """INSERT ... SELECT of runs number lo .. hi-1 of n, spread over ``days`` up to ``now``."""
    end_us = int(now.astimezone(timezone.utc).timestamp() * 1_000_000)
    start_us = end_us - days * 86_400_000_000
    step_us = days * 86_400_000_000 / n
    # Each draw once, in a materialized step: a CASE would otherwise compute its draw again per WHEN.
    draws = ", ".join(f"{_u(k)} AS u{k}" for k in (0, 1, 2, 3, 5, 7, 8, 10)) + f", {_hash(9)} AS h9, {_hash(11)} AS h11"
    which = _pick("u1", [(t[1], str(k)) for k, t in enumerate(TASKS)])
    pick = lambda values: "(CASE k " + " ".join(f"WHEN {k} THEN {v}" for k, v in enumerate(values)) + " END)"  # noqa: E731
    name, median, queue = (pick([_lit(t[0]) for t in TASKS]), pick([repr(t[2]) for t in TASKS]),
                           pick([_lit(t[3]) for t in TASKS]))
    state = (f"(CASE WHEN seen_us > {end_us - 120_000_000} AND u2 < 0.5 THEN "
             f"{_pick('u3', [(1 / 3, _lit('PENDING')), (1 / 3, _lit('RECEIVED')), (1 / 3, _lit('STARTED'))])} "
             f"WHEN u2 < 0.0005 THEN 'STARTED' WHEN u2 < 0.04 THEN 'FAILURE' WHEN u2 < 0.05 THEN 'RETRY' "
             f"WHEN u2 < 0.055 THEN 'REVOKED' ELSE 'SUCCESS' END)")
    wait = "(CASE WHEN u7 > 0.02 THEN -ln(1 - u8) * 0.3 ELSE 10 + u8 * 590 END)"
    normal = f"(sqrt(-2 * ln(CAST(h9 + 1 AS DOUBLE PRECISION) / {P})) * cos({2 * math.pi!r} * u10))"
    runtime = f"({median} * exp(0.6 * {normal}))"
    parent_i = f"(i - 1 - {_hash(6)} % 50)"
    series_sql = (f"series(i) AS (SELECT {lo} UNION ALL SELECT i + 1 FROM series WHERE i < {hi - 1})"
                  if dialect == "sqlite" else f"series(i) AS (SELECT generate_series({lo}::bigint, {hi - 1}::bigint))")
    ctes = [
        series_sql,
        f"d AS MATERIALIZED (SELECT i, {draws} FROM series)",
        f"k AS MATERIALIZED (SELECT d.*, {which} AS k, "
        f"{start_us} + CAST((i + u0) * {step_us!r} AS BIGINT) AS seen_us FROM d)",
        f"r AS MATERIALIZED (SELECT i, seen_us, {_time(dialect, 'seen_us')} AS seen_at, {name} AS name, "
        f"{queue} AS queue, {state} AS state, {_round(dialect, wait, 3)} AS wait, "
        f"{_round(dialect, runtime, 4)} AS runtime, h11 % {len(EXCEPTIONS)} AS exc, "
        f"{_task_id(dialect, 'i')} AS task_id, "
        f"CASE WHEN i >= 50 AND u5 < 0.15 THEN {_task_id(dialect, parent_i)} END AS parent_id FROM k)",
    ]
    started = "state NOT IN ('PENDING', 'RECEIVED', 'REVOKED')"
    finished = "state IN ('SUCCESS', 'FAILURE', 'RETRY')"
    failed = "state IN ('FAILURE', 'RETRY')"
    started_us = "seen_us + CAST(wait * 1000000 AS BIGINT)"
    finished_us = f"{started_us} + CAST(runtime * 1000000 AS BIGINT)"
    state_us = f"(CASE WHEN {finished} THEN {finished_us} WHEN {started} THEN {started_us} ELSE seen_us END)"
    exc_type = "CASE exc " + " ".join(f"WHEN {k} THEN {_lit(t)}" for k, (t, _) in enumerate(EXCEPTIONS)) + " END"
    exc_text = "CASE exc " + " ".join(f"WHEN {k} THEN {_lit(e)}" for k, (_, e) in enumerate(EXCEPTIONS)) + " END"
    false = "0" if dialect == "sqlite" else "false"
    columns = {
        "task_id": "task_id", "name": "name", "state": "state", "state_at": _time(dialect, state_us),
        "args": f"'(' || ({_hash(12)} % 100000) || ',)'", "kwargs": "'{}'",
        "result": "CASE WHEN state = 'SUCCESS' THEN '''ok''' END",
        "exception": f"CASE WHEN {failed} THEN {exc_text} END", "exception_type": f"CASE WHEN {failed} THEN {exc_type} END",
        "traceback": f"CASE WHEN state = 'FAILURE' THEN {_lit(TRACEBACK)} || {exc_text} END",
        "queue": "queue", "routing_key": "queue", "exchange": "''",
        "worker": f"CASE WHEN {started} THEN 'celery@worker-' || (1 + {_hash(13)} % {WORKERS}) END",
        "root_id": "coalesce(parent_id, task_id)", "parent_id": "parent_id",
        "retries": f"CASE WHEN state = 'RETRY' THEN 1 + {_hash(14)} % 3 ELSE 0 END",
        "seen_at": "seen_at", "sent_at": "seen_at",
        "received_at": f"CASE WHEN state <> 'PENDING' THEN {_time(dialect, 'seen_us + CAST(wait * 200000 AS BIGINT)')} END",
        "started_at": f"CASE WHEN {started} THEN {_time(dialect, started_us)} END",
        "finished_at": f"CASE WHEN {finished} THEN {_time(dialect, finished_us)} END",
        "runtime": f"CASE WHEN {finished} THEN runtime END", "queue_wait": f"CASE WHEN {started} THEN wait END",
        "truncated": false, "updated_at": _time(dialect, state_us), "redelivered": false,
    }
    recursive = "RECURSIVE " if dialect == "sqlite" else ""
    return (f"WITH {recursive}{', '.join(ctes)} INSERT INTO task_runs ({', '.join(columns)}) "
            f"SELECT {', '.join(columns.values())} FROM r")
