"""A Celery app with taskmon's durable relay installed: the one line a user adds."""
import os

from celery import Celery

from tasks.relay import install

app = Celery("relayed", broker=os.environ.get("SAMPLE_BROKER_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_send_sent_event=True,
    worker_send_task_events=True,
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
install(app)


@app.task(name="relayed.add")
def add(x, y):
    return x + y


@app.task(name="relayed.echo")
def echo(*args, **kwargs):
    return len(repr(args)) + len(repr(kwargs))
