"""`taskmon db upgrade` / `db current` on both databases."""
from click.testing import CliRunner
from sqlalchemy import inspect

from cli import cli
from storage.db import head_revision, make_engine


def test_db_upgrade_twice_and_current(db_url):
    runner = CliRunner()
    first = runner.invoke(cli, ["db", "upgrade", "--db", db_url])
    assert first.exit_code == 0, first.output
    assert f"upgraded from empty to {head_revision()}" in first.output
    second = runner.invoke(cli, ["db", "upgrade", "--db", db_url])
    assert second.exit_code == 0 and "already at revision" in second.output
    current = runner.invoke(cli, ["db", "current", "--db", db_url])
    assert current.exit_code == 0 and f"current: {head_revision()}" in current.output
    assert {"task_runs", "workers", "alembic_version"} <= set(inspect(make_engine(db_url)).get_table_names())


def test_db_current_on_empty_database_exits_1(tmp_path):
    (tmp_path / "empty.db").touch()  # an empty file is an empty SQLite database
    result = CliRunner().invoke(cli, ["db", "current", "--db", f"sqlite:///{tmp_path / 'empty.db'}"])
    assert result.exit_code == 1 and "current: empty" in result.output


def test_unreachable_postgres_is_one_line_error():
    result = CliRunner().invoke(cli, ["db", "upgrade", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the database" in lines[0] and "TASKMON_DATABASE_URL" in lines[0]
