"""taskmon's Celery app: operational jobs (cleanup, reports, billing, alerts)."""
