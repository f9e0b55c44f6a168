"""How much memory SQLite's compiled task_runs upserts hold in the writer's connection, with and without the triggers.

The SQLite writer sends multi-row upserts of 1, 2, 4 ... 256 rows (storage.runs), each compiled
once and kept in sqlite3's statement cache; SQLite compiles the rollup and totals triggers into
each of them. This process writes one of each size into a fresh file and prints its VmRSS
before and after, as it is (the triggers on) or with the triggers dropped:

    python bench/ingest/statement_memory.py            # with the triggers
    python bench/ingest/statement_memory.py --drop     # without
"""
from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(REPO))

from storage.db import make_engine, upgrade  # noqa: E402
from storage.rollups import TOTALS_TRIGGERS, TRIGGERS  # noqa: E402
from storage.runs import upsert_runs  # noqa: E402
from tests.test_storage_contract import lifecycle  # noqa: E402


def vm_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS")) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drop", action="store_true", help="drop the rollup and totals triggers first")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="taskmon-stmt-"))
    engine = make_engine(f"sqlite:///{tmp / 'm.db'}")
    try:
        upgrade(engine)
        if args.drop:
            with engine.begin() as conn:
                for trigger in TRIGGERS + TOTALS_TRIGGERS:
                    conn.exec_driver_sql(f"DROP TRIGGER {trigger}")
        rows = lifecycle()
        with engine.begin() as conn:
            upsert_runs(conn, [dict(rows[0], task_id="warm")])
        gc.collect()
        before, n = vm_rss_mb(), 0
        with engine.begin() as conn:
            for size in (1, 2, 4, 8, 16, 32, 64, 128, 256):
                upsert_runs(conn, [dict(rows[-1], task_id=f"r{n + i}") for i in range(size)])
                n += size
        gc.collect()
        print(f"triggers {'dropped' if args.drop else 'on'}: VmRSS {before:.1f} MB -> {vm_rss_mb():.1f} MB "
              f"after one upsert of each of the nine sizes")
    finally:
        engine.dispose()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
