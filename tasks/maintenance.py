"""Maintenance jobs: export a history range, back up the database, health check, planner statistics."""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from celery import shared_task
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import SQLAlchemyError

from storage.db import current_revision, head_revision, safe_url
from storage.schema import metadata, task_runs
from tasks.policies import BadInput, CriticalTask, DefaultTask

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("csv", "json")
EXPORT_COLUMNS = [c.name for c in task_runs.columns]


class BackupError(RuntimeError):
    """The backup could not be made; the message says why and what to do."""


class HealthCheckFailed(RuntimeError):
    """At least one health check failed; the message lists them."""


def parse_moment(name: str, value: str | datetime) -> datetime:
    """An aware datetime from ISO 8601 text (a time without an offset is taken as UTC)."""
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(value)
        except (TypeError, ValueError):
            raise BadInput(f"bad {name} {value!r}: expected ISO 8601, e.g. 2026-11-01T00:00:00+08:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _atomic_file(path: Path, suffix: str):
    """A temporary file beside ``path``; the caller renames it into place once it is complete."""
    if not path.parent.is_dir():
        raise BadInput(f"directory {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    return Path(tmp)


def _json_value(value):
    return value.isoformat() if isinstance(value, datetime) else value


def export_data(engine: Engine, path: str | os.PathLike, *, start, end, fmt: str = "csv") -> dict[str, Any]:
    """Write the task runs first seen in ``[start, end)`` to a CSV or JSON file, oldest first."""
    start, end = parse_moment("start", start), parse_moment("end", end)
    if end <= start:
        raise BadInput(f"end {end.isoformat()} is not after start {start.isoformat()}")
    if fmt not in EXPORT_FORMATS:
        raise BadInput(f"unknown export format {fmt!r}: one of {', '.join(EXPORT_FORMATS)}")
    path = Path(path)
    tmp = _atomic_file(path, ".tmp")
    query = (select(task_runs).where(task_runs.c.seen_at >= start, task_runs.c.seen_at < end)
             .order_by(task_runs.c.seen_at, task_runs.c.task_id))
    count = 0
    try:
        with engine.connect() as conn, open(tmp, "w", newline="", encoding="utf-8") as out:
            rows = conn.execution_options(yield_per=1000).execute(query).mappings()
            if fmt == "csv":
                writer = csv.writer(out)
                writer.writerow(EXPORT_COLUMNS)
                for row in rows:
                    writer.writerow([_json_value(row[c]) for c in EXPORT_COLUMNS])
                    count += 1
            else:
                out.write("[")
                for row in rows:
                    out.write(("," if count else "") + "\n" + json.dumps({c: _json_value(row[c]) for c in EXPORT_COLUMNS}))
                    count += 1
                out.write("\n]\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"path": str(path), "rows": count, "format": fmt}


def backup_database(engine: Engine, directory: str | os.PathLike, *, now: datetime, keep: int = 7,
                    pg_dump: str = "pg_dump") -> dict[str, Any]:
    """Back up the history store into ``directory``; keep the ``keep`` newest backups (0: all)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stamp = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dialect = engine.dialect.name
    if dialect == "sqlite":
        path = directory / f"taskmon-{stamp}.sqlite3"
        _backup_sqlite(engine, path)
    elif dialect == "postgresql":
        path = directory / f"taskmon-{stamp}.pgdump"
        _backup_postgres(engine, path, pg_dump)
    else:
        raise BackupError(f"cannot back up a {dialect} database")
    pruned = _prune(directory, keep) if keep else []
    log.info("backed up %s to %s (%d bytes); pruned %d old backups", safe_url(engine), path, path.stat().st_size, len(pruned))
    return {"path": str(path), "bytes": path.stat().st_size, "pruned": [str(p) for p in pruned]}


def _backup_sqlite(engine: Engine, path: Path) -> None:
    source = engine.url.database
    if not source or source == ":memory:":
        raise BackupError("cannot back up an in-memory SQLite database")
    tmp = _atomic_file(path, ".tmp")
    try:
        # The online backup API; one step (pages=-1) under a read transaction, which in WAL mode
        # never blocks the daemon's writer, and is never restarted by its writes.
        src, dst = sqlite3.connect(source), sqlite3.connect(tmp)
        try:
            src.backup(dst, pages=-1)
        finally:
            dst.close()
            src.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _backup_postgres(engine: Engine, path: Path, pg_dump: str) -> None:
    binary = shutil.which(pg_dump)
    if binary is None:
        raise BackupError(f"{pg_dump} not found: install the PostgreSQL client tools "
                          "(e.g. apt-get install postgresql-client) to back up PostgreSQL")
    url = engine.url.set(drivername="postgresql", password=None)
    env = dict(os.environ)
    if engine.url.password:
        env["PGPASSWORD"] = engine.url.password  # not on the command line, where ps would show it
    tmp = _atomic_file(path, ".tmp")
    try:
        done = subprocess.run([binary, "--format=custom", f"--file={tmp}", url.render_as_string(hide_password=False)],
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            raise BackupError(f"pg_dump of {safe_url(engine)} failed: {reason}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _prune(directory: Path, keep: int) -> list[Path]:
    backups = sorted((p for p in directory.glob("taskmon-*") if p.suffix in (".sqlite3", ".pgdump")), reverse=True)
    for old in backups[keep:]:
        old.unlink()
    return backups[keep:]


def health_check(engine: Engine, broker_url: str, *, disk_path: str | os.PathLike, min_free_mb: int = 500) -> dict[str, Any]:
    """Database reachable and migrated, broker reachable, enough free disk; {"ok", "checks"}."""
    from kombu import Connection

    checks: dict[str, dict[str, Any]] = {}
    broker = Connection(broker_url).as_uri()  # password masked
    try:
        revision = current_revision(engine)
        head = head_revision()
        checks["database"] = {"ok": True, "detail": safe_url(engine)}
        checks["schema"] = {"ok": revision == head, "detail": f"revision {revision}, newest {head}"}
    except SQLAlchemyError as exc:
        checks["database"] = {"ok": False, "detail": f"{safe_url(engine)}: {str(getattr(exc, 'orig', exc)).strip()}"}
    try:
        with Connection(broker_url, connect_timeout=5) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        checks["broker"] = {"ok": True, "detail": broker}
    except Exception as exc:  # kombu raises transport-specific errors
        checks["broker"] = {"ok": False, "detail": f"{broker}: {exc}"}
    probe = Path(disk_path)
    while not probe.exists():
        probe = probe.parent
    free_mb = shutil.disk_usage(probe).free // (1024 * 1024)
    checks["disk"] = {"ok": free_mb >= min_free_mb, "detail": f"{free_mb} MB free at {probe} (minimum {min_free_mb})"}
    return {"ok": all(c["ok"] for c in checks.values()), "checks": checks}


def optimize_database(engine: Engine) -> dict[str, Any]:
    """Refresh the planner's statistics (ANALYZE) on taskmon's tables, e.g. after a large cleanup."""
    tables = sorted(metadata.tables)
    with engine.begin() as conn:
        for name in tables:
            conn.execute(text(f'ANALYZE "{name}"'))
        if engine.dialect.name == "sqlite":
            conn.execute(text("PRAGMA optimize"))
    return {"analyzed": tables}


def _history_dir(engine: Engine) -> str:
    """Where the SQLite file lives (its disk is the one that fills up); the working directory otherwise."""
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        return str(Path(engine.url.database).expanduser().resolve().parent)
    return os.getcwd()


@shared_task(name="maintenance.export_data", base=DefaultTask, bind=True)
def export_data_task(self, start: str, end: str, path: str, format: str = "csv"):
    return export_data(self.engine, path, start=start, end=end, fmt=format)


@shared_task(name="maintenance.backup_database", base=CriticalTask, bind=True)
def backup_database_task(self):
    s = self.settings
    return backup_database(self.engine, s.backup_dir, now=datetime.now(timezone.utc), keep=s.backup_keep)


@shared_task(name="maintenance.health_check", base=DefaultTask, bind=True, autoretry_for=())
def health_check_task(self, min_free_mb: int = 500):
    """Fails (no retry: the next scheduled check is the retry) when a check fails, so the monitor sees it."""
    outcome = health_check(self.engine, self.settings.broker_url, disk_path=_history_dir(self.engine),
                           min_free_mb=min_free_mb)
    if not outcome["ok"]:
        failing = [f"{name}: {c['detail']}" for name, c in outcome["checks"].items() if not c["ok"]]
        raise HealthCheckFailed("; ".join(failing))
    return outcome


@shared_task(name="maintenance.optimize_database", base=DefaultTask, bind=True)
def optimize_database_task(self):
    return optimize_database(self.engine)
