"""The daemon's /metrics after a real worker ran successes, failures, retries and revokes:
celery-exporter's names, types, label names and values, checked against the stored history."""
import subprocess
import time
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from monitor.metrics import DEFAULT_BUCKETS
from monitor.redis_server import free_port
from storage.schema import task_runs
from tests.api_fixtures import role_tokens, start_api  # noqa: F401  (fixture)
from tests.daemon_helpers import running_daemon, wait_for_runs
from tests.services import need_program

TASK = ["name", "hostname", "queue_name"]
EXPECTED_TYPES = {
    **{f"celery_task_{k}": ("counter", TASK) for k in
       ("sent", "received", "started", "succeeded", "rejected", "revoked", "retried")},
    "celery_task_failed": ("counter", ["name", "hostname", "exception", "queue_name"]),
    "celery_task_runtime": ("histogram", TASK),
    "celery_task_queue_wait_time": ("histogram", TASK),
    "celery_worker_up": ("gauge", ["hostname"]),
    "celery_worker_tasks_active": ("gauge", ["hostname"]),
    "celery_queue_length": ("gauge", ["queue_name"]),
    "celery_active_consumer_count": ("gauge", ["queue_name"]),
    "celery_active_worker_count": ("gauge", ["queue_name"]),
    "celery_active_process_count": ("gauge", ["queue_name"]),
}


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def samples(families, name: str) -> dict:
    return {tuple(sorted(s.labels.items())): s.value for f in families for s in f.samples if s.name == name}


def test_metrics_port_serves_celery_exporter_metrics_that_follow_the_history(
        redis_url, sqlite_url, start_worker, celery_client, tmp_path):
    client = celery_client(redis_url)
    port = free_port()
    with running_daemon(redis_url, sqlite_url, metrics_port=port, metrics_host="127.0.0.1",
                        detect_interval=0) as daemon:
        worker = start_worker(redis_url)
        sent = [client.send_task("sample.add", (i, 1)) for i in range(3)]
        sent += [client.send_task("sample.fail", kwargs={"message": "broken"}) for _ in range(2)]
        flaky = client.send_task("sample.flaky", kwargs={"fail_times": 2})
        revoked = client.send_task("sample.add", (1, 1), countdown=4)
        waiting = client.send_task("sample.add", (5, 5), queue="parked")  # nobody consumes "parked"
        time.sleep(1.0)
        client.control.revoke(revoked.id)
        wait_for_runs(daemon.engine, [r.id for r in sent] + [flaky.id], {"SUCCESS", "FAILURE"}, timeout=40)
        wait_for_runs(daemon.engine, [revoked.id], {"REVOKED"}, timeout=40)
        wait_for_runs(daemon.engine, [waiting.id], {"PENDING"}, timeout=20)
        time.sleep(1.5)  # a worker heartbeat with the pool idle
        text = scrape(port)
        with daemon.engine.connect() as conn:
            runs = [dict(r) for r in conn.execute(select(task_runs)).mappings()]

    families = list(text_string_to_metric_families(text))
    by_name = {f.name: f for f in families}
    for name, (kind, labels) in EXPECTED_TYPES.items():
        assert name in by_name, name
        assert by_name[name].type == kind, name
        for s in by_name[name].samples:
            got = sorted(k for k in s.labels if k != "le")
            assert got == sorted(labels), (name, s)

    # Counters: the history, counted per (name, worker, queue).
    expected = {k: defaultdict(float) for k in ("sent", "received", "started", "succeeded", "revoked", "retried")}
    failed = defaultdict(float)
    for r in runs:
        key = (("hostname", r["worker"] or ""), ("name", r["name"] or ""), ("queue_name", r["queue"] or ""))
        expected["sent"][key] += r["sent_at"] is not None
        expected["received"][key] += r["received_at"] is not None
        expected["started"][key] += r["started_at"] is not None
        expected["succeeded"][key] += r["state"] == "SUCCESS"
        expected["revoked"][key] += r["state"] == "REVOKED"
        expected["retried"][key] += r["retries"]
        if r["state"] == "FAILURE":
            failed[tuple(sorted(key + (("exception", r["exception_type"]),)))] += 1
    for kind, values in expected.items():
        assert samples(families, f"celery_task_{kind}_total") == dict(values), kind
    got_failed = {k: v for k, v in samples(families, "celery_task_failed_total").items() if v}
    assert got_failed == dict(failed)
    add = (("hostname", worker.hostname), ("name", "sample.add"), ("queue_name", "celery"))
    assert samples(families, "celery_task_succeeded_total")[add] == 3
    assert samples(families, "celery_task_revoked_total")[add] == 1
    flaky_key = (("hostname", worker.hostname), ("name", "sample.flaky"), ("queue_name", "celery"))
    assert samples(families, "celery_task_retried_total")[flaky_key] == 2
    fail_key = (("exception", "ValueError"), ("hostname", worker.hostname), ("name", "sample.fail"),
                ("queue_name", "celery"))
    assert got_failed[fail_key] == 2

    # The runtime histogram: celery-exporter's buckets, counts and sums of the successful runs.
    runtime = samples(families, "celery_task_runtime_bucket")
    bounds = sorted({float(dict(k)["le"]) for k in runtime})
    assert bounds == sorted([*DEFAULT_BUCKETS, float("inf")])
    ok_add = [r["runtime"] for r in runs if r["name"] == "sample.add" and r["state"] == "SUCCESS"]
    assert runtime[tuple(sorted(dict(add, le="+Inf").items()))] == len(ok_add) == 3
    assert runtime[tuple(sorted(dict(add, le="0.25").items()))] == sum(v <= 0.25 for v in ok_add)
    assert abs(samples(families, "celery_task_runtime_sum")[add] - sum(ok_add)) < 1e-6
    waits = [r["queue_wait"] for r in runs if r["name"] == "sample.add" and r["queue"] == "celery"
             and r["worker"] == worker.hostname and r["queue_wait"] is not None]
    assert samples(families, "celery_task_queue_wait_time_count")[add] == len(waits)

    # Workers and queues.
    assert samples(families, "celery_worker_up") == {(("hostname", worker.hostname),): 1.0}
    assert samples(families, "celery_worker_tasks_active") == {(("hostname", worker.hostname),): 0.0}
    assert samples(families, "celery_queue_length")[(("queue_name", "parked"),)] == 1
    assert samples(families, "celery_queue_length")[(("queue_name", "celery"),)] == 0
    assert samples(families, "celery_active_worker_count")[(("queue_name", "celery"),)] == 1
    assert samples(families, "celery_active_process_count")[(("queue_name", "celery"),)] == 2
    assert samples(families, "celery_active_worker_count")[(("queue_name", "parked"),)] == 0

    # taskmon's own.
    received = samples(families, "taskmon_events_received_total")
    assert received[(("source", "pubsub"),)] > 0
    assert samples(families, "taskmon_rows_written_total")[()] > 0
    assert samples(families, "taskmon_events_dropped_total")[()] == 0
    assert samples(families, "taskmon_heartbeat_age_seconds")[()] < 5
    assert samples(families, "taskmon_metrics_label_values_folded") == {
        (("label", "name"),): 0, (("label", "exception"),): 0}

    # promtool parses the exposition (Debian's prometheus package). Its linter objects to two of
    # celery-exporter's names (a gauge ending in _count), which dashboards depend on: those two
    # complaints and nothing else.
    promtool = need_program("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    complaints = sorted(line for line in (check.stdout + check.stderr).splitlines() if line.strip())
    assert complaints == [f"{name} non-histogram and non-summary metrics should not have \"_count\" suffix"
                          for name in ("celery_active_process_count", "celery_active_worker_count")]
    broken = text.replace("# TYPE celery_worker_up gauge", "# TYPE celery_worker_up gauge\ncelery_worker_up{ 1")
    assert subprocess.run([promtool, "check", "metrics"], input=broken, capture_output=True, text=True).returncode == 1


def test_serve_mounts_metrics_for_a_viewer_with_each_running_daemon_labelled(
        redis_url, sqlite_store, start_worker, celery_client, start_api):
    client = celery_client(redis_url)
    tokens = role_tokens(sqlite_store)
    with running_daemon(redis_url, sqlite_store, detect_interval=0) as daemon:
        worker = start_worker(redis_url)
        ok = client.send_task("sample.add", (1, 2))
        wait_for_runs(daemon.engine, [ok.id], {"SUCCESS"}, timeout=30)
        time.sleep(1.0)  # a heartbeat with the counters after the run
        server = start_api(sqlite_store, broker_url=redis_url)
        with server.client() as anonymous:
            assert anonymous.get("/metrics").status_code == 401
        with server.client(tokens["viewer"]) as viewer:
            answer = viewer.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(answer.text))
    key = (("hostname", worker.hostname), ("name", "sample.add"), ("queue_name", "celery"))
    assert samples(families, "celery_task_succeeded_total")[key] == 1
    rows = samples(families, "taskmon_rows_written_total")
    assert list(rows) == [(("daemon", daemon.daemon_id),)] and rows[(("daemon", daemon.daemon_id),)] > 0
