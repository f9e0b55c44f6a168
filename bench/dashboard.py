"""bench/dashboard: the dashboard's Overview and Tasks pages on a 1,000,000-run SQLite history.

The same as `bench/api.py pages` (where the timing lives, beside the API's figures):

    python bench/dashboard.py                   # 30 requests of each page after a warm-up
    python bench/dashboard.py --rows 100000 --requests 50
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api import pages_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(pages_main(sys.argv[1:]))
