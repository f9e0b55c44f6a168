"""After a gap, unfinished rows are settled from the Celery result backend."""
import time

from storage.health import list_gaps
from tests.daemon_helpers import running_daemon, wait_for_runs


def test_tasks_that_finished_while_the_daemon_was_down_are_reconciled(fresh_redis, sqlite_url, start_worker,
                                                                      celery_client):
    backend = fresh_redis.url.rsplit("/", 1)[0] + "/1"
    app = celery_client(fresh_redis.url)
    start_worker(fresh_redis.url, env={"SAMPLE_RESULT_BACKEND": backend})
    with running_daemon(fresh_redis.url, sqlite_url, result_backend=backend) as daemon:
        slow = [app.send_task("sample.sleep", (2,)) for _ in range(2)]
        failing = app.send_task("sample.sleep", ("not a number",))
        wait_for_runs(daemon.engine, [r.id for r in slow], {"STARTED"}, timeout=20)
    # Down while they finish: pub/sub events of their end are lost.
    time.sleep(3)
    with running_daemon(fresh_redis.url, sqlite_url, result_backend=backend) as daemon:
        rows = wait_for_runs(daemon.engine, [r.id for r in slow] + [failing.id], {"SUCCESS", "FAILURE"}, timeout=20)
        with daemon.engine.connect() as conn:
            gaps = list_gaps(conn)
    assert {rows[r.id]["state"] for r in slow} == {"SUCCESS"}
    assert rows[slow[0].id]["result"] == "2"
    assert rows[failing.id]["state"] == "FAILURE" and rows[failing.id]["exception_type"] == "TypeError"
    assert gaps[0]["reason"] == "daemon_down" and gaps[0]["reconciled"] >= 2
