"""RabbitMQ: the same ingestion through a durable queue, which keeps events while the daemon is down."""
import time

from celery import Celery

from tests.daemon_helpers import running_daemon, wait_for_runs


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
    start_worker(amqp_url)
    results = [app.send_task("sample.add", (i, i)) for i in range(20)]
    time.sleep(3)  # the worker runs them while no daemon is consuming
    with running_daemon(amqp_url, sqlite_url, sources=("amqp",)) as daemon:
        rows = wait_for_runs(daemon.engine, [r.id for r in results], {"SUCCESS"}, timeout=30)
    assert len(rows) == 20 and {r["state"] for r in rows.values()} == {"SUCCESS"}
    assert sorted(int(r["result"]) for r in rows.values()) == [2 * i for i in range(20)]


def test_other_celery_apps_on_the_vhost_still_work(amqp_url):
    # The durable queue is declared with celery's own exchange definition (no PRECONDITION_FAILED).
    app = Celery("probe", broker=amqp_url)
    with app.connection_for_write() as conn:
        from monitor.sources.amqp import EVENT_EXCHANGE

        EVENT_EXCHANGE(conn.default_channel).declare()
        from celery.events.event import event_exchange

        event_exchange(conn.default_channel).declare()
