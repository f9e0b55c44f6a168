"""The Celery app: queues, routes and worker behaviour, configured from taskmon's Settings."""
from __future__ import annotations

import logging
import os

from celery import Celery
from celery.signals import worker_init
from kombu import Queue
from sqlalchemy import Engine

from tasks.settings import Settings
from storage.db import ensure_schema, make_engine

log = logging.getLogger(__name__)

QUEUE_NAMES = ("default", "high_priority", "low_priority", "finance", "reports", "email", "maintenance", "alerts")

# Routes by task module (names are "module.task"); exact names first, then patterns in this order.
ROUTES = {
    "maintenance.health_check": {"queue": "high_priority"},  # health checks are critical
    "cleanup.*": {"queue": "low_priority"},
    "*.cleanup_*": {"queue": "low_priority"},  # cleanup_* jobs, whichever module holds them
    "billing.*": {"queue": "finance"},
    "reports.*": {"queue": "reports"},
    "notifications.*": {"queue": "email"},
    "maintenance.*": {"queue": "maintenance"},
    "alerts.*": {"queue": "alerts"},
    "tasks.alerts.*": {"queue": "alerts"},
}

TASK_MODULES = ("tasks.cleanup", "tasks.reports", "tasks.billing", "tasks.notifications", "tasks.maintenance",
                "tasks.demo", "tasks.alerts")

SOFT_TIME_LIMIT = 300
HARD_TIME_LIMIT = 600
RESULT_EXPIRES = 3600


class TaskmonCelery(Celery):
    """A Celery app that carries taskmon's settings and opens the history store in each process."""

    def __init__(self, settings: Settings, **kwargs):
        super().__init__("taskmon", **kwargs)
        self.settings = settings
        self._engine: Engine | None = None
        self._engine_pid: int | None = None

    @property
    def engine(self) -> Engine:
        """The history store's Engine; after a fork (prefork pool, embedded beat) the child gets its own pool."""
        pid = os.getpid()
        if self._engine is None:
            self._engine = make_engine(self.settings.database_url)
        elif self._engine_pid != pid:
            # close=False: the parent's connections are the parent's; closing them here would cut its sessions.
            self._engine.dispose(close=False)
        self._engine_pid = pid
        return self._engine


def celery_config(settings: Settings) -> dict:
    return {
        "broker_url": settings.broker_url,
        # Empty: no result backend. Return values still reach the history through task-succeeded events.
        "result_backend": settings.result_backend or None,
        "result_expires": RESULT_EXPIRES,
        "timezone": settings.timezone,
        "enable_utc": True,  # messages carry UTC; crontabs are still read in `timezone`
        "task_queues": [Queue(name, routing_key=name) for name in QUEUE_NAMES],
        "task_default_queue": "default",
        "task_routes": ROUTES,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_soft_time_limit": SOFT_TIME_LIMIT,
        "task_time_limit": HARD_TIME_LIMIT,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "beat_scheduler": "tasks.scheduler:DatabaseScheduler",
        "broker_connection_retry_on_startup": True,
        "worker_pool_restarts": settings.worker_pool_restarts,
    }


def make_app(settings: Settings, set_as_current: bool = True) -> TaskmonCelery:
    app = TaskmonCelery(settings, include=list(TASK_MODULES), set_as_current=set_as_current)
    app.conf.update(celery_config(settings))
    if settings.relay_url or settings.broker_url.split("://", 1)[0] in ("redis", "rediss"):
        # taskmon's own jobs are watched without loss: every event also goes to the relay stream.
        from tasks.relay import install

        install(app, url=settings.relay_url or None, stream=settings.relay_stream, maxlen=settings.relay_maxlen)
    return app


def task_names(app: Celery) -> list[str]:
    """The names of taskmon's own tasks registered on ``app``."""
    import importlib

    for module in TASK_MODULES:
        importlib.import_module(module)
    # app.tasks also holds celery's built-ins and any shared task another imported app defined.
    return sorted(name for name, task in app.tasks.items() if task.__module__ in TASK_MODULES)


@worker_init.connect
def _upgrade_schema(sender=None, **_kwargs) -> None:
    """Bring the history store up to date once, in the worker's main process, before the pool forks."""
    app = getattr(sender, "app", None)
    if isinstance(app, TaskmonCelery):
        # An engine of its own, closed again: no SQLite connection may cross the fork.
        engine = make_engine(app.settings.database_url)
        try:
            ensure_schema(engine)
        finally:
            engine.dispose()
