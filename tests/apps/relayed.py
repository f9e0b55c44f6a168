"""A Celery app with taskmon's durable relay installed: the one line a user adds."""
import os
import signal
import time

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
# The relay's Redis comes from TASKMON_RELAY_URL when set (else the broker); tests shorten the
# heartbeat so that a vanished process is noticed in seconds.
install(app, heartbeat=float(os.environ.get("RELAY_HEARTBEAT", "5")))


@app.task(name="relayed.add")
def add(x, y):
    return x + y


@app.task(name="relayed.echo")
def echo(*args, **kwargs):
    return len(repr(args)) + len(repr(kwargs))


@app.task(name="relayed.fanout_then_die")
def fanout_then_die(first: int, then: int):
    """Send ``first`` add tasks and wait until this process's relay wrote their events, send
    ``then`` more and kill this process at once (kill -9 of a worker child, its buffer not yet written)."""
    relay = app._taskmon_relay
    for i in range(first):
        add.delay(i, 0)
    deadline = time.monotonic() + 10
    while relay.stats()["written"] < first and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(then):
        add.delay(first + i, 0)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(name="relayed.fail")
def fail(message="boom"):
    raise ValueError(message)
