"""Following the history: the newest runs, then every run written since, poll after poll."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from sqlalchemy import Engine

from storage.history import RunFilter, changed_since, latest_update, list_runs

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# A writer stamps updated_at before it commits, so a row can become visible with a time a little
# older than rows already read. Each poll looks back this far and skips what it already printed.
LOOKBACK = timedelta(seconds=5)


def follow(
    engine: Engine,
    f: RunFilter = RunFilter(),
    *,
    initial: int = 10,
    interval: float = 1.0,
    max_polls: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    lookback: timedelta = LOOKBACK,
) -> Iterator[list[dict[str, Any]]]:
    """Yield the newest ``initial`` runs (oldest first), then after each poll the runs written since.

    Runs until the caller stops iterating (Ctrl-C in `taskmon tail`), or after ``max_polls`` polls.
    """
    printed: dict[str, datetime] = {}  # task_id -> updated_at already shown, within the lookback
    with engine.connect() as conn:
        first = list(reversed(list_runs(conn, f, limit=initial))) if initial else []
        cursor = latest_update(conn) or EPOCH
        for row in changed_since(conn, f, cursor - lookback, until=cursor):
            printed[row["task_id"]] = row["updated_at"]
    for row in first:
        printed[row["task_id"]] = max(row["updated_at"], printed.get(row["task_id"], EPOCH))
    yield first
    polls = 0
    while max_polls is None or polls < max_polls:
        sleep(interval)
        polls += 1
        with engine.connect() as conn:
            # Late commits inside the lookback, then everything newer than the cursor (which always
            # moves forward, however many rows a poll brings).
            rows = changed_since(conn, f, cursor - lookback, until=cursor) + changed_since(conn, f, cursor)
        fresh = [r for r in rows if printed.get(r["task_id"]) != r["updated_at"]]
        for row in rows:
            printed[row["task_id"]] = row["updated_at"]
            cursor = max(cursor, row["updated_at"])
        horizon = cursor - lookback
        printed = {k: v for k, v in printed.items() if v >= horizon}
        yield fresh
