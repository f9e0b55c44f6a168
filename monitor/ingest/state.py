"""Merge events per task (celery's state precedence) into one pending row per task and worker.

Only the events of the batch being written are held: the database row is the long-lived
state, and storage.runs merges with it by the same rules, so memory stays bounded. The rows
lack queue_wait, which storage.params derives when it builds their parameters.
"""
from __future__ import annotations

from typing import Any

from monitor.ingest.events import Update
from storage.merge import merge_fields


class Pending:
    def __init__(self) -> None:
        self.tasks: dict[str, dict[str, Any]] = {}
        self.workers: dict[str, dict[str, Any]] = {}

    def add(self, update: Update) -> None:
        if update.kind == "task":
            row = self.tasks.get(update.key)
            if row is None:
                self.tasks[update.key] = update.row  # a fresh dict of its own: ours to merge into
            else:
                merge_fields(row, update.row)  # queue_wait is derived when the row is written
            return
        old = self.workers.get(update.key)
        row = update.row
        if old is None:
            self.workers[update.key] = row
        elif row["last_heartbeat"] >= old["last_heartbeat"]:
            self.workers[update.key] = dict(row, first_seen=min(old["first_seen"], row["first_seen"]))
        else:
            old["first_seen"] = min(old["first_seen"], row["first_seen"])

    def __len__(self) -> int:
        return len(self.tasks) + len(self.workers)
