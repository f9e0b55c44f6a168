"""taskmon's Celery app: operational jobs (cleanup, reports, billing, notifications, maintenance).

``celery -A tasks worker -B`` and ``celery -A tasks beat`` find the app as ``tasks.app`` (alias
``tasks.celery``). It is built from taskmon's settings (environment and config file) on first
access, not at import, so that importing a job module never reads the environment.
"""
from __future__ import annotations

import functools


@functools.cache
def _default_app():
    from tasks.settings import load_settings
    from tasks.application import make_app

    return make_app(load_settings().settings)


def __getattr__(name: str):
    if name in ("app", "celery"):
        return _default_app()
    raise AttributeError(f"module 'tasks' has no attribute {name!r}")
