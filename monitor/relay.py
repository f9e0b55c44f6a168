"""``from monitor.relay import install; install(app)`` keeps working: the relay lives in tasks.relay,
where a Celery process imports it without loading the daemon."""
from tasks.relay import DEFAULT_STREAM, Relay, install

__all__ = ["DEFAULT_STREAM", "Relay", "install"]
