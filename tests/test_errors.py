"""One line for an error, whatever its message: empty, blank first line, or SQLAlchemy's SQL and link."""
import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from storage.db import make_engine, unreachable_message
from storage.errors import first_line


@pytest.mark.parametrize("exc, line", [
    (TimeoutError(), "TimeoutError"),
    (OSError(""), "OSError"),
    (ValueError("\n  \nsecond line is the first with words\nthird"), "second line is the first with words"),
    (RuntimeError("  padded  "), "padded"),
    (OperationalError("SELECT 1", {}, psycopg.OperationalError("server closed the connection\nunexpectedly")),
     "server closed the connection"),
    (OperationalError("SELECT 1", {}, psycopg.OperationalError("")), "OperationalError"),
])
def test_first_line_is_the_first_line_with_words_or_the_type_name(exc, line):
    assert first_line(exc) == line


def test_an_unreachable_database_with_an_empty_driver_message_is_still_one_line():
    engine = make_engine("postgresql+psycopg://taskmon@127.0.0.1:1/history")
    exc = OperationalError("SELECT 1", {}, psycopg.OperationalError(""))
    assert unreachable_message(engine, exc) == (
        "cannot reach the database at postgresql+psycopg://taskmon@127.0.0.1:1/history: OperationalError; "
        "start it or set TASKMON_DATABASE_URL")
