"""export_data, backup_database, health_check and optimize_database on real databases."""
import csv
import json
import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from storage.schema import task_runs
from tasks.maintenance import BackupError, backup_database, export_data, health_check, optimize_database
from tasks.policies import BadInput
from tests.history import insert_runs
from tests.services import need_program

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def test_export_a_range_to_csv_and_json_the_same_each_time(engine, tmp_path):
    insert_runs(engine, 10, T0, step=timedelta(hours=1), queue="default")
    start, end = (T0 + timedelta(hours=2)).isoformat(), (T0 + timedelta(hours=5)).isoformat()
    out = export_data(engine, tmp_path / "runs.csv", start=start, end=end)
    assert out == {"path": str(tmp_path / "runs.csv"), "rows": 3, "format": "csv"}
    table = list(csv.DictReader(open(tmp_path / "runs.csv")))
    assert [r["task_id"] for r in table] == ["t0000002", "t0000003", "t0000004"]
    assert list(table[0]) == [c.name for c in task_runs.columns]
    assert table[0]["seen_at"] == "2026-11-01T02:00:00+00:00" and table[0]["queue"] == "default"
    first = (tmp_path / "runs.csv").read_bytes()
    export_data(engine, tmp_path / "runs.csv", start=start, end=end)
    assert (tmp_path / "runs.csv").read_bytes() == first
    as_json = export_data(engine, tmp_path / "runs.json", start=start, end=end, fmt="json")
    data = json.loads((tmp_path / "runs.json").read_text())
    assert as_json["rows"] == 3 and [r["task_id"] for r in data] == ["t0000002", "t0000003", "t0000004"]
    assert list(tmp_path.glob(".*")) == []  # no temporary files left behind


def test_an_empty_range_is_a_valid_empty_file(engine, tmp_path):
    export_data(engine, tmp_path / "none.json", start="2020-01-01", end="2020-01-02", fmt="json")
    assert json.loads((tmp_path / "none.json").read_text()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"start": "yesterday", "end": "2026-11-02"}, "bad start 'yesterday'"),
    ({"start": "2026-11-02", "end": "2026-11-01"}, "is not after start"),
    ({"start": "2026-11-01", "end": "2026-11-02", "fmt": "xml"}, "unknown export format 'xml'"),
])
def test_export_bad_input(engine, tmp_path, kwargs, message):
    with pytest.raises(BadInput, match=message):
        export_data(engine, tmp_path / "x", **kwargs)


def test_export_into_a_missing_directory_is_refused(engine, tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        export_data(engine, tmp_path / "no" / "x.csv", start="2026-11-01", end="2026-11-02")


def test_backup_of_sqlite_is_a_complete_database_and_old_backups_are_pruned(sqlite_url, tmp_path):
    from storage.db import make_engine, upgrade

    engine = make_engine(sqlite_url)
    upgrade(engine)
    insert_runs(engine, 25, T0)
    now = datetime(2026, 11, 23, 3, 0, tzinfo=timezone.utc)
    results = [backup_database(engine, tmp_path / "backups", now=now + timedelta(days=n), keep=2) for n in range(3)]
    files = sorted(p.name for p in (tmp_path / "backups").iterdir())
    assert files == ["taskmon-20261124T030000Z.sqlite3", "taskmon-20261125T030000Z.sqlite3"]
    assert results[2]["pruned"] == [str(tmp_path / "backups" / "taskmon-20261123T030000Z.sqlite3")]
    with sqlite3.connect(results[2]["path"]) as copy:
        assert copy.execute("select count(*) from task_runs").fetchone() == (25,)
        assert copy.execute("pragma integrity_check").fetchone() == ("ok",)


def test_backup_of_postgresql_uses_pg_dump(pg_url, tmp_path):
    from storage.db import make_engine, upgrade

    need_program("pg_dump")
    engine = make_engine(pg_url)
    upgrade(engine)
    out = backup_database(engine, tmp_path, now=datetime(2026, 11, 23, tzinfo=timezone.utc), keep=0)
    assert out["path"].endswith("taskmon-20261123T000000Z.pgdump") and out["bytes"] > 0
    listing = subprocess.run([need_program("pg_restore"), "--list", out["path"]], capture_output=True, text=True)
    assert listing.returncode == 0 and "TABLE" in listing.stdout and "task_runs" in listing.stdout


def test_backup_of_postgresql_without_pg_dump_is_a_clear_error(pg_url, tmp_path):
    from storage.db import make_engine

    with pytest.raises(BackupError, match=r"pg_dump-missing not found: install the PostgreSQL client tools"):
        backup_database(make_engine(pg_url), tmp_path, now=T0, pg_dump="pg_dump-missing")
    assert list(tmp_path.iterdir()) == []


def test_health_check_passes_with_everything_up(engine, redis_url, tmp_path):
    out = health_check(engine, redis_url, disk_path=tmp_path, min_free_mb=1)
    assert out["ok"] is True
    assert {name: c["ok"] for name, c in out["checks"].items()} == {"database": True, "schema": True, "broker": True,
                                                                    "disk": True}


def test_health_check_names_what_is_failing(engine, tmp_path):
    from monitor.redis_server import free_port

    out = health_check(engine, f"redis://127.0.0.1:{free_port()}/0", disk_path=tmp_path / "not" / "yet", min_free_mb=10**9)
    assert out["ok"] is False
    assert not out["checks"]["broker"]["ok"] and not out["checks"]["disk"]["ok"] and out["checks"]["database"]["ok"]
    assert "minimum 1000000000" in out["checks"]["disk"]["detail"]


def test_optimize_refreshes_planner_statistics(engine):
    insert_runs(engine, 5, T0)
    assert "task_runs" in optimize_database(engine)["analyzed"]
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            analyzed = conn.execute(text("select count(*) from sqlite_stat1 where tbl = 'task_runs'")).scalar_one()
            assert analyzed > 0
        else:
            # reltuples is -1 until a table is first analyzed (PostgreSQL 14+)
            assert conn.execute(text("select reltuples from pg_class where relname = 'task_runs' "
                                     "and relnamespace = current_schema()::regnamespace")).scalar_one() == 5
