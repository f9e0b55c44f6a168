"""Retry policies as base task classes: "default" and "critical", as the requirement documents name them, with a cap on retries.

Both retry on any exception with exponential backoff and full jitter, capped at 600 s; celery
replaces the fixed countdown with the backoff, so ``retry_backoff`` is the first delay's ceiling.
Bad input is never retried: the same arguments would fail the same way.
"""
from __future__ import annotations

from celery import Task

from tasks.backoff import compute_backoff
from tasks.errors import BadInput  # noqa: F401 - the jobs import it from here with their base classes


class AppTask(Task):
    """A task of taskmon's app: its settings and history Engine at hand."""

    @property
    def settings(self):
        return self.app.settings

    @property
    def engine(self):
        return self.app.engine


class DefaultTask(AppTask):
    """3 retries, backoff from 60 s doubling up to 600 s, jittered."""

    autoretry_for = (Exception,)
    dont_autoretry_for = (BadInput,)
    max_retries = 3
    retry_backoff = 60
    retry_backoff_max = 600
    retry_jitter = True


class CriticalTask(DefaultTask):
    """5 retries, backoff from 30 s doubling up to 600 s, jittered: money and backups."""

    max_retries = 5
    retry_backoff = 30


class AlertTask(AppTask):
    """Alert e-mail: retried for a long time with a capped, jittered backoff (the timings are settings,
    alert_retry_delay / alert_retry_max_delay / alert_max_retries), never automatically on any error."""

    max_retries = None  # the task passes alert_max_retries on each retry

    def retry_delay(self, retries: int) -> float:
        s = self.settings
        return compute_backoff(retries, first=s.alert_retry_delay, cap=s.alert_retry_max_delay)
