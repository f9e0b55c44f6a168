"""Commands that read a history never create one; `run`, `db upgrade` (and `demo`) do.

A missing file, a missing PostgreSQL database, an empty database and a file that is not a
database are each a one-line error with exit code 1, whatever the command.
"""
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from storage.db import current_revision, head_revision, make_engine, upgrade
from tests.history_data import insert, now_utc, run
from tests.services import unique

ROOT = Path(__file__).resolve().parent.parent

# Every command that reads (or edits) an existing history, with the arguments it needs.
READ_COMMANDS = [
    ["history"], ["show", "some-id"], ["stats"], ["workers"], ["queues"], ["tail", "--max-polls", "0"],
    ["dead-letters"], ["dead-letters", "resolve", "some-id"], ["replay", "some-id", "--yes"], ["alerts"],
    ["report", "daily"], ["schedule", "list"], ["cleanup", "--dry-run"], ["check"], ["db", "current"],
]


def taskmon(*args):
    return CliRunner().invoke(cli, list(args))


def one_line_error(result, code=1):
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exc_info
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def cmd_id(args):
    return " ".join(args)


@pytest.mark.parametrize("args", READ_COMMANDS, ids=cmd_id)
def test_a_read_command_on_a_path_in_a_missing_directory_says_so_and_creates_nothing(tmp_path, args):
    path = tmp_path / "typo" / "dir" / "x.db"
    line = one_line_error(taskmon(*args, "--db", f"sqlite:///{path}"))
    assert str(path) in line and "does not exist" in line
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("args", READ_COMMANDS, ids=cmd_id)
def test_a_read_command_on_a_missing_file_says_so_and_creates_nothing(tmp_path, args):
    path = tmp_path / "missing.db"
    line = one_line_error(taskmon(*args, "--db", f"sqlite:///{path}"))
    assert str(path) in line and "does not exist" in line
    assert list(tmp_path.iterdir()) == []


def test_config_never_opens_the_database(tmp_path):
    result = taskmon("config", "--db", f"sqlite:///{tmp_path / 'missing.db'}")
    assert result.exit_code == 0, result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["history"], ["stats"], ["check"], ["db", "upgrade"], ["run", "--source", "pubsub"]],
                         ids=cmd_id)
def test_a_postgresql_database_that_does_not_exist_is_a_one_line_error(pg_server_url, args):
    name = unique("taskmon_missing")
    url = pg_server_url.set(database=name).render_as_string(hide_password=False)
    line = one_line_error(taskmon(*args, "--db", url))
    assert name in line and "does not exist" in line and f"createdb {name}" in line  # not "start it"


@pytest.mark.parametrize("args", [["run", "--source", "pubsub"], ["history"], ["show", "some-id"], ["stats"],
                                  ["db", "upgrade"], ["db", "current"], ["check"]], ids=cmd_id)
def test_a_file_that_is_not_a_database_is_a_one_line_error_naming_it(tmp_path, args):
    path = tmp_path / "notes.txt"
    path.write_text("not a database\n" * 100)
    line = one_line_error(taskmon(*args, "--db", f"sqlite:///{path}"))
    assert str(path) in line and "not a SQLite database" in line
    assert path.read_text() == "not a database\n" * 100


@pytest.mark.parametrize("args", [["history"], ["show", "some-id"], ["stats"]], ids=cmd_id)
def test_a_read_command_on_an_empty_database_does_not_create_the_schema(tmp_path, args):
    path = tmp_path / "empty.db"
    path.touch()  # an empty file is an empty SQLite database
    line = one_line_error(taskmon(*args, "--db", f"sqlite:///{path}"))
    assert str(path) in line and "no taskmon history yet" in line and "db upgrade" in line
    assert path.stat().st_size == 0


def test_a_read_command_upgrades_a_history_that_is_behind(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    upgrade(engine, "0006")
    result = taskmon("history", "--db", url)
    assert result.exit_code == 0 and "no task runs match" in result.output
    assert current_revision(engine) == head_revision()
    engine.dispose()


def test_db_upgrade_creates_the_directory_and_the_database(tmp_path):
    path = tmp_path / "new" / "dir" / "x.db"
    result = taskmon("db", "upgrade", "--db", f"sqlite:///{path}")
    assert result.exit_code == 0, result.output
    assert path.exists() and current_revision(make_engine(f"sqlite:///{path}")) == head_revision()


def test_run_creates_the_directory_and_the_database(tmp_path, redis_url):
    path = tmp_path / "new" / "dir" / "x.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMON_")}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "run", "--db", f"sqlite:///{path}", "--broker", redis_url,
                             "--source", "pubsub", "--no-enable-events"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        revision, heartbeats = None, 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not heartbeats and proc.poll() is None:
            time.sleep(0.2)
            if path.exists():
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                try:
                    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                    revision = row[0] if row else None  # the table exists before its row, mid-migration
                    heartbeats = conn.execute("SELECT count(*) FROM daemon_status").fetchone()[0]
                except sqlite3.Error:
                    pass  # not created yet, or being migrated
                finally:
                    conn.close()
        # The daemon's first heartbeat: it created the store and serves (and stops cleanly on SIGTERM).
        assert revision == head_revision() and heartbeats, f"taskmon run did not create {path}: {proc.poll()=}"
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode(errors="replace")
    assert proc.returncode == 0, output


# -- what a command imports ------------------------------------------------------------------------

HEAVY = {"sqlalchemy", "alembic", "celery", "kombu", "redis", "apscheduler"}
LOADED = """
import json, sys
out, sys.argv = sys.argv[1], ["taskmon", *sys.argv[2:]]
from cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code or 0
with open(out, "w") as fh:
    json.dump({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}, fh)
"""


def loaded_packages(tmp_path, *args, code=0) -> set[str]:
    """The heavy packages `taskmon ARGS` imported, run in a fresh interpreter; it must exit ``code``."""
    out = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMON_")}
    done = subprocess.run([sys.executable, "-c", LOADED, str(out), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert out.exists(), done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["code"] == code, done.stdout + done.stderr
    return set(result["modules"]) & HEAVY


@pytest.fixture
def history_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'history.db'}"
    engine = make_engine(url)
    upgrade(engine)
    insert(engine, [run("r01", "reports.daily", "SUCCESS", now_utc(), runtime=1.0, worker="celery@a")])
    engine.dispose()
    return url


@pytest.mark.parametrize("args", [["--help"], ["history", "--limit", "10"], ["show", "r01"]], ids=cmd_id)
def test_help_history_and_show_on_sqlite_import_neither_sqlalchemy_nor_celery(tmp_path, history_file, args):
    db = [] if args == ["--help"] else ["--db", history_file]
    assert loaded_packages(tmp_path, *args, *db) == set()


# `check` exits 1 on a history no daemon has written to: what it imported is the same.
@pytest.mark.parametrize("args, code", [(["stats", "--since", "24h"], 0), (["workers"], 0), (["alerts"], 0),
                                        (["dead-letters"], 0), (["report", "daily"], 0), (["db", "current"], 0),
                                        (["check"], 1)], ids=lambda v: cmd_id(v) if isinstance(v, list) else str(v))
def test_other_read_commands_import_no_alembic_celery_or_broker_client(tmp_path, history_file, args, code):
    assert loaded_packages(tmp_path, *args, "--db", history_file, code=code) <= {"sqlalchemy"}
