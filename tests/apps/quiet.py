"""A Celery app that sends no task events unless someone (taskmon) turns them on."""
import os

from celery import Celery

app = Celery("quiet", broker=os.environ.get("SAMPLE_BROKER_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(worker_send_task_events=False, broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)


@app.task(name="quiet.add")
def add(x, y):
    return x + y
