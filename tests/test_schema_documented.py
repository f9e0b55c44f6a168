"""docs/schema.md documents every table of storage/schema.py under its own heading, column by column."""
import re

from storage.schema import metadata
from tests.services import REPO

DOC = REPO / "docs" / "schema.md"


def documented_columns() -> dict[str, list[str]]:
    """{heading: the first cells of its markdown tables' rows}; a cell "a, b" names two columns."""
    sections: dict[str, list[str]] = {}
    heading = None
    for line in DOC.read_text().splitlines():
        if match := re.match(r"#{2,3} (.+)", line):
            heading = match.group(1).strip()
            sections[heading] = []
        elif heading and line.startswith("|") and not re.match(r"\|\s*(column|-+)\s*\|", line):
            sections[heading] += [name.strip() for name in line.split("|")[1].split(",")]
    return sections


def test_every_table_and_column_is_documented_under_the_table_s_own_heading():
    sections = documented_columns()
    assert [t.name for t in metadata.sorted_tables if t.name not in sections] == []
    for table in metadata.sorted_tables:
        columns = sections[table.name]
        assert sorted(columns) == sorted(c.name for c in table.columns), f"## {table.name} in {DOC.name}"
        assert len(columns) == len(set(columns)), f"## {table.name} documents a column twice"


def test_every_markdown_table_starts_with_a_header_and_a_rule():
    # Rows left over after a table (a heading moved away from its columns) have no header line.
    lines = DOC.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and not lines[i - 1].startswith("|"):
            assert re.match(r"\|\s*\w+\s*\|", line) and lines[i + 1].startswith("| ---"), f"line {i + 1}: {line}"
