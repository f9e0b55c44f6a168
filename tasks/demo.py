"""Sample tasks `taskmon demo` sends: quick successes, retries, failures, slow runs and a secret.

They live in the app so that `taskmon demo` exercises exactly what a deployment runs.
"""
from __future__ import annotations

import time

from celery import shared_task


@shared_task(name="demo.add")
def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="demo.flaky", bind=True, max_retries=3, default_retry_delay=1)
def flaky(self, fail_times: int = 1) -> str:
    """Fails its first ``fail_times`` attempts with a retry, then succeeds."""
    if self.request.retries < fail_times:
        raise self.retry(exc=ConnectionError(f"upstream refused attempt {self.request.retries + 1}"))
    return f"ok after {self.request.retries} retries"


@shared_task(name="demo.fail")
def fail(reason: str = "boom") -> None:
    raise ValueError(reason)


@shared_task(name="demo.slow")
def slow(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@shared_task(name="demo.login")
def login(user: str, password: str | None = None, api_key: str | None = None) -> str:
    return f"{user} logged in"
