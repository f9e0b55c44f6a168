"""RabbitMQ: the same ingestion through a durable queue, which keeps events while the daemon is down."""
import threading

from celery import uuid

from tests.daemon_helpers import running_daemon, wait_for_runs
from tests.services import wait_until


def test_amqp_ingests_real_worker_tasks(amqp_url, sqlite_url, start_worker, celery_client):
    app = celery_client(amqp_url)
    with running_daemon(amqp_url, sqlite_url, sources=("amqp",)) as daemon:
        worker = start_worker(amqp_url)
        ok = app.send_task("sample.add", (20, 22))
        bad = app.send_task("sample.fail", kwargs={"message": "amqp boom"})
        flaky = app.send_task("sample.flaky", kwargs={"fail_times": 1})
        rows = wait_for_runs(daemon.engine, [ok.id, bad.id, flaky.id], {"SUCCESS", "FAILURE"}, timeout=40)
    assert rows[ok.id]["state"] == "SUCCESS" and rows[ok.id]["result"] == "42"
    assert rows[ok.id]["worker"] == worker.hostname and rows[ok.id]["args"] == "(20, 22)"
    assert rows[bad.id]["state"] == "FAILURE" and "amqp boom" in rows[bad.id]["exception"]
    assert rows[flaky.id]["state"] == "SUCCESS" and rows[flaky.id]["retries"] == 1


def test_amqp_queue_keeps_events_published_while_daemon_is_down(amqp_url, sqlite_url, start_worker, celery_client):
    app = celery_client(amqp_url)
    with running_daemon(amqp_url, sqlite_url, sources=("amqp",)):
        pass  # declares the durable queue, then stops
    worker = start_worker(amqp_url)
    results = [app.send_task("sample.add", (i, i)) for i in range(20)]
    # The worker runs them while no daemon is consuming.
    wait_until(lambda: all(f"[{r.id}] succeeded".encode() in worker.log.read_bytes() for r in results),
               "the worker to run the 20 tasks")
    with running_daemon(amqp_url, sqlite_url, sources=("amqp",)) as daemon:
        rows = wait_for_runs(daemon.engine, [r.id for r in results], {"SUCCESS"}, timeout=30)
    assert len(rows) == 20 and {r["state"] for r in rows.values()} == {"SUCCESS"}
    assert sorted(int(r["result"]) for r in rows.values()) == [2 * i for i in range(20)]


LIFECYCLE = {"task-sent", "task-received", "task-started", "task-succeeded"}


def test_other_celery_apps_on_the_vhost_still_work(amqp_url, sqlite_url, start_worker, celery_client):
    # taskmon binds its durable queue with celery's own exchange definition: a monitor of another
    # app (celery events, Flower) declares the same exchange without PRECONDITION_FAILED, and the
    # events reach both it and taskmon.
    app = celery_client(amqp_url)
    task_id = uuid()
    seen, ready = [], threading.Event()

    def collect(event):
        seen.append(event)
        if LIFECYCLE <= {e["type"] for e in seen if e.get("uuid") == task_id}:
            receiver.should_stop = True

    with running_daemon(amqp_url, sqlite_url, sources=("amqp",)) as daemon:
        start_worker(amqp_url)
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": collect})
            receiver.on_consume_ready = lambda *args, **kwargs: ready.set()
            capture = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
            capture.start()
            assert ready.wait(10), "the other app's event receiver did not start consuming"
            app.send_task("sample.add", (1, 2), task_id=task_id)
            rows = wait_for_runs(daemon.engine, [task_id], {"SUCCESS"}, timeout=30)
            capture.join(30)
            receiver.should_stop = True
    assert rows[task_id]["result"] == "3"
    # The client's task-sent and the worker's events travel on different connections: in any order.
    assert sorted(e["type"] for e in seen if e.get("uuid") == task_id) == sorted(LIFECYCLE)
