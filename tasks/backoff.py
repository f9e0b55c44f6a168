"""How long to wait before trying again: the one backoff taskmon uses (reconnects, commits, alert e-mail).

Exponential from ``first`` up to ``cap``, then jittered into the upper half of that ceiling (as
dramatiq's ``compute_backoff``), so that many clients retrying at once spread out instead of
arriving together, while a retry still never comes sooner than half the ceiling.
"""
from __future__ import annotations

import random


def compute_backoff(attempt: int, *, first: float, cap: float, jitter: bool = True) -> float:
    """Seconds to wait before retry number ``attempt`` (0: the first retry)."""
    ceiling = min(first * 2 ** min(max(attempt, 0), 32), cap)
    return ceiling * (0.5 + random.random() / 2) if jitter else ceiling
