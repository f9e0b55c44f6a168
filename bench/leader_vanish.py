"""How long a follower takes to lead when the leader's host vanishes: no FIN, no RST, every packet of
the leader's lock session dropped (iptables on the loopback interface), and how long the cut-off
leader goes on acting (its lease) and takes to learn it lost its session.

Needs root and iptables (it adds two DROP rules for one client port and removes them after), and
PostgreSQL (``--postgres``; it creates and drops a schema of its own). Prints its figures.

    sudo .venv/bin/python bench/leader_vanish.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, text  # noqa: E402

from monitor.cluster import Leadership  # noqa: E402
from storage.db import make_engine  # noqa: E402

SCHEMA = f"bench_vanish_{os.getpid()}"
LIMIT = 60.0


def leader_port(admin) -> int:
    with admin.connect() as conn:
        ports = conn.execute(text(
            "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = hashtext(:key)::oid"),
            {"key": f"taskmon.leader:{SCHEMA}"}).scalars().all()
    if len(ports) != 1:
        sys.exit(f"cannot tell the leader's session apart (client ports {ports}); is another bench running?")
    return ports[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("TASKMON_BENCH_POSTGRES_URL",
                                                             "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("iptables") is None:
        sys.exit("bench/leader_vanish.py needs root and iptables: it drops the leader's packets on lo")
    admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{SCHEMA}"'))
    engine = make_engine(f"{args.postgres}?options=-csearch_path%3D{SCHEMA}")
    first, second = Leadership(engine), Leadership(engine)
    rules: list[list[str]] = []
    try:
        first.start()
        while not first.is_leader():
            time.sleep(0.05)
        second.start()
        time.sleep(3)  # a few polls: the second follows
        port = leader_port(admin)
        rules = [["INPUT", "-i", "lo", "-p", "tcp", flag, str(port), "-j", "DROP"] for flag in ("--sport", "--dport")]
        for rule in rules:
            subprocess.run(["iptables", "-I", *rule], check=True)
        cut = time.monotonic()
        acted = led = learned = None
        while time.monotonic() - cut < LIMIT and (led is None or learned is None):
            now = time.monotonic() - cut
            if acted is None and not first.is_leader():
                acted = now
            if led is None and second.is_leader():
                led = now
            if learned is None and not first.leading.is_set():
                learned = now
            time.sleep(0.05)

        def fmt(value):
            return f"{value:.1f} s" if value is not None else f"not within {LIMIT:.0f} s"

        print(f"load average {open('/proc/loadavg').read().split()[:3]}")
        print(f"follower leads after:                 {fmt(led)}")
        print(f"cut-off leader stops acting after:    {fmt(acted)}")
        print(f"cut-off leader learns it lost after:  {fmt(learned)}")
    finally:
        for rule in rules:
            subprocess.run(["iptables", "-D", *rule])
        for one in (first, second):
            one.stop()
        for one in (first, second):
            one.join(15)
            one.close()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    main()
