"""A plain Celery app for tests: the kind of app taskmon watches, with nothing of taskmon in it.

Configured from the environment so that a worker subprocess and the test share a broker.
"""
import os
import time
from pathlib import Path

from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

app = Celery("sample", broker=os.environ.get("SAMPLE_BROKER_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_send_sent_event=True,
    worker_send_task_events=True,
    task_track_started=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    result_backend=os.environ.get("SAMPLE_RESULT_BACKEND") or None,
    broker_connection_retry_on_startup=True,
    event_queue_ttl=60,
    worker_hijack_root_logger=False,
    # kombu's default; a test lowers it so that a new worker takes back a killed worker's task at once
    broker_transport_options={"visibility_timeout": float(os.environ.get("SAMPLE_VISIBILITY_TIMEOUT", 3600))},
)


@app.task(name="sample.add")
def add(x, y):
    return x + y


@app.task(name="sample.fail")
def fail(message="boom"):
    raise ValueError(message)


@app.task(name="sample.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="sample.flaky", bind=True, max_retries=3, default_retry_delay=0.2)
def flaky(self, fail_times=1):
    """Fails ``fail_times`` attempts with a retry, then succeeds."""
    if self.request.retries < fail_times:
        raise self.retry(exc=RuntimeError(f"attempt {self.request.retries} failed"))
    return f"ok after {self.request.retries} retries"


@app.task(name="sample.limited", soft_time_limit=0.5, time_limit=2)
def limited(seconds):
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        raise
    return seconds


@app.task(name="sample.login")
def login(user, password=None, token=None):
    return f"logged in {user}"


@app.task(name="sample.login_fail")
def login_fail(user, password=None):
    """Always refused: a failure whose kwargs carry a secret that no e-mail may show."""
    raise PermissionError(f"login refused for {user}")


@app.task(name="sample.fragile")
def fragile(flag_path, n):
    """Fails while the file at ``flag_path`` says "broken": a test fixes the cause, then replays."""
    if Path(flag_path).read_text().strip() == "broken":
        raise RuntimeError("dependency is down")
    return n * 2


@app.task(name="sample.ping")
def ping():
    """A task that only answers: the round trip of `taskmon ping --task sample.ping`."""
    return "pong"
