"""CPU seconds (user + system) from /proc: of a process tree, and of the PostgreSQL backends serving a database.

CPU time is steadier than a rate on a shared machine: other engineers' load slows a consumer
down, but what it spends per event changes much less.
"""
from __future__ import annotations

import os

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one live process (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # the name, in parentheses, may hold spaces
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5), counted after the name


def tree_cpu(pids) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in pids}


def backend_pids(conn, dbname: str) -> list[int]:
    """PIDs of the server processes connected to ``dbname`` (but the asking one), via pg_stat_activity.

    The server runs on this machine (the bench reads their /proc); ``conn`` is a psycopg connection.
    """
    rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                        "AND backend_type = 'client backend'", (dbname,)).fetchall()
    return [r[0] for r in rows]


class CpuMeter:
    """CPU seconds of a changing set of processes between ``start`` and ``stop``.

    A process first seen after ``start`` counts from zero (its whole life is in the window);
    one that exits before ``stop`` counts up to the last ``sample`` that saw it.
    """

    def __init__(self):
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.started = False

    def sample(self, pids) -> None:
        for pid, value in tree_cpu(pids).items():
            if value <= 0.0 and pid in self.last:
                continue  # gone: keep what it had
            if pid not in self.first:
                self.first[pid] = value if not self.started else 0.0
            self.last[pid] = value

    def start(self, pids) -> None:
        self.sample(pids)
        self.started = True

    def seconds(self) -> float:
        return round(sum(self.last[p] - self.first.get(p, 0.0) for p in self.last), 2)
