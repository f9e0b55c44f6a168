"""Task names the history has seen, with how many runs each."""
from __future__ import annotations

from typing import Any

from storage.sql import fetch


def name_counts(conn) -> list[dict[str, Any]]:
    """[{name, runs}] by name; runs with no name yet (only a late event seen) are left out."""
    sql = "SELECT name, count(*) AS runs FROM task_runs WHERE name IS NOT NULL GROUP BY name ORDER BY name"
    return fetch(conn, sql, {}, {})
