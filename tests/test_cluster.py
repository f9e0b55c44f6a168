"""Several daemons on one PostgreSQL history: shared ingestion, one leader, failover after kill -9."""
import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
from sqlalchemy import func, select

from monitor.cluster import ClusterError, claim_name, cluster_downtime, sqlite_single_daemon
from monitor.sources.redis_stream import pending_count
from storage.db import make_engine, upgrade
from storage.schema import dead_letters, receiver_gaps, task_runs
from tests.cluster_helpers import follower_besides, leader_of, statuses, wait_until
from tests.services import REPO, DaemonProcess

N_TASKS = 10_000
N_FAILING = 20
TAKEOVER = 15.0
CLUSTER_ENV = {"TASKMON_STATUS_INTERVAL": "1", "TASKMON_DETECT_INTERVAL": "1"}
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def status_row(daemon_id, started, ended, stopped=False):
    return {"daemon_id": daemon_id, "started_at": T0 + timedelta(seconds=started),
            "heartbeat_at": T0 + timedelta(seconds=ended), "stopped_at": T0 + timedelta(seconds=ended) if stopped else None}


def test_a_downtime_gap_is_recorded_only_when_no_daemon_was_alive():
    start = T0 + timedelta(seconds=100)
    # another daemon beating until (and after) this one's start: the cluster was up
    assert cluster_downtime([status_row("a", 0, 99.5), status_row("b", 0, 40, stopped=True)], start, 2) is None
    # every daemon gone long before: one gap from the last one's end
    gap = cluster_downtime([status_row("a", 0, 60), status_row("b", 0, 40, stopped=True)], start, 2)
    assert (gap.reason, gap.started_at, gap.ended_at) == ("daemon_down", T0 + timedelta(seconds=60), start)
    assert "a" in gap.detail
    # a daemon started after this one says nothing about before it
    assert cluster_downtime([status_row("c", 150, 160)], start, 2) is None
    assert cluster_downtime([], start, 2) is None


def test_daemons_on_one_host_get_stable_distinct_names(tmp_path):
    import os

    first, fd1 = claim_name("postgresql:///h", "taskmon:events", directory=tmp_path)
    second, fd2 = claim_name("postgresql:///h", "taskmon:events", directory=tmp_path)
    assert first != second and first.endswith("-0") and second.endswith("-1")
    os.close(fd1)  # the first daemon died: its restart gets its name, and so its pending entries, back
    again, fd3 = claim_name("postgresql:///h", "taskmon:events", directory=tmp_path)
    assert again == first
    os.close(fd2)
    os.close(fd3)


def test_a_second_daemon_on_sqlite_refuses_in_process(sqlite_url):
    engine = make_engine(sqlite_url)
    fd = sqlite_single_daemon(engine)
    try:
        with pytest.raises(ClusterError, match="SQLite allows one daemon"):
            sqlite_single_daemon(engine)
    finally:
        import os

        os.close(fd)


def test_a_second_daemon_on_sqlite_refuses_to_start_with_one_line_and_exit_2(fresh_redis, sqlite_url, tmp_path):
    upgrade(make_engine(sqlite_url))
    first = DaemonProcess(fresh_redis.url, sqlite_url, "--source", "stream", logdir=tmp_path)
    try:
        first.wait_log("taskmon daemon")
        second = subprocess.run([sys.executable, "-m", "cli", "run", "--broker", fresh_redis.url, "--db", sqlite_url,
                                 "--source", "stream", "--no-enable-events"],
                                cwd=REPO, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
        assert "another taskmon daemon" in lines[0] and "SQLite allows one daemon" in lines[0]
    finally:
        assert first.terminate() == 0


# -- two daemons, a real worker, 10,000 tasks, the leader killed with -9 in the middle ---------------

def count_rows(engine, state=None):
    query = select(func.count()).select_from(task_runs)
    if state:
        query = query.where(task_runs.c.state == state)
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def taskmon(*args, env=None):
    import os

    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


def run_failover(broker_url, pg_url, tmp_path, app, source, task_prefix, start_worker, worker_app, settled=None):
    """Two daemons, a worker, 10,000 tasks, the leader killed with -9 while they run: the survivor leads and
    every task is stored once; ``settled()`` is checked while the survivor still runs (what it took over)."""
    engine = make_engine(pg_url)
    upgrade(engine)
    first = DaemonProcess(broker_url, pg_url, "--source", source, logdir=tmp_path, env=CLUSTER_ENV)
    first.wait_log("taskmon daemon")
    first_id = wait_until(lambda: leader_of(engine), "the first daemon leads")
    second = DaemonProcess(broker_url, pg_url, "--source", source, logdir=tmp_path, env=CLUSTER_ENV)
    daemons = [first, second]
    try:
        second.wait_log("taskmon daemon")
        second_id = wait_until(lambda: follower_besides(engine, first_id), "the second daemon follows")
        start_worker(broker_url, app=worker_app, pool="threads", concurrency=8)
        ids, failing = [], []

        def send():
            with app.producer_or_acquire() as producer:
                for i in range(N_TASKS):
                    if i % (N_TASKS // N_FAILING) == 7:
                        failing.append(app.send_task(f"{task_prefix}.fail", (f"boom {i}",), producer=producer).id)
                        ids.append(failing[-1])
                    else:
                        ids.append(app.send_task(f"{task_prefix}.add", (i, 1), producer=producer).id)

        sender = threading.Thread(target=send)
        sender.start()
        wait_until(lambda: count_rows(engine) >= N_TASKS // 4, "a quarter of the tasks stored", timeout=120)
        before = statuses(engine)
        assert before[first_id]["counters"].get("detect.sweeps", 0) > 0, "the leader sweeps"
        assert before[second_id]["counters"].get("detect.sweeps", 0) == 0, "a follower does not sweep"
        assert before[second_id]["counters"].get("events_received", 0) > 0, "the follower ingests its share"
        first.kill()  # the leader, mid-run: batches in memory and unacknowledged events in flight
        killed = time.monotonic()
        wait_until(lambda: leader_of(engine) == second_id, "the second daemon leads", timeout=TAKEOVER + 5)
        took = time.monotonic() - killed
        assert took <= TAKEOVER, f"takeover took {took:.1f}s"
        sender.join()
        wait_until(lambda: count_rows(engine, "SUCCESS") == N_TASKS - len(failing), "every task stored SUCCESS",
                   timeout=180, every=0.5)
        with engine.connect() as conn:
            rows = conn.execute(select(task_runs.c.task_id, task_runs.c.state)).all()
        assert len(rows) == N_TASKS and {r.task_id for r in rows} == set(ids)  # each once, none extra
        assert {r.task_id for r in rows if r.state == "FAILURE"} == set(failing)
        wait_until(lambda: _letters(engine) == set(failing), "one dead letter per failed task", timeout=30)
        with engine.connect() as conn:  # the verdicts were made once: no letter written again
            rewritten = conn.execute(select(func.count()).select_from(dead_letters)
                                     .where(dead_letters.c.updated_at != dead_letters.c.created_at)).scalar()
        assert rewritten == 0
        # taskmon daemons and check, from the survivor's point of view
        listing = taskmon("daemons", "--json", "--db", pg_url)
        assert listing.returncode == 0, listing.stderr
        by_id = {r["daemon_id"]: r for r in json.loads(listing.stdout)}
        assert by_id[second_id]["role"] == "leader" and by_id[second_id]["state"] == "alive"
        assert by_id[first_id]["state"] in ("stale", "alive") and by_id[first_id]["rows_written"] > 0
        checked = taskmon("check", "--db", pg_url, env={"TASKMON_DAEMON_NAME": second_id})
        assert checked.returncode == 0 and f"cluster leader {second_id}" in checked.stdout, checked.stdout
        with engine.connect() as conn:
            downs = conn.execute(select(func.count()).select_from(receiver_gaps)
                                 .where(receiver_gaps.c.reason == "daemon_down")).scalar()
        assert downs == 0, "a daemon was alive all along: no downtime"
        if settled is not None:
            settled()
        return engine, second_id
    finally:
        for d in daemons:
            if d.proc.poll() is None:
                assert d.terminate() == 0


def _letters(engine):
    with engine.connect() as conn:
        return set(conn.execute(select(dead_letters.c.task_id)).scalars())


@pytest.mark.slow
def test_two_daemons_on_the_relay_stream_lose_nothing_when_the_leader_is_killed(
        fresh_redis, pg_url, start_worker, tmp_path, celery_client):
    from tasks.relay import install

    app = celery_client(fresh_redis.url)
    install(app)
    client = redis.Redis(port=fresh_redis.port)

    def nothing_pending():
        # The survivor claims the entries the killed daemon left pending once that consumer has been
        # silent for 15 s (it looks every 5 s): waited for while the survivor runs, since every task
        # may be stored before then (the killed daemon committed them but was killed before XACK) and
        # no daemon is left to claim them once the survivor is stopped.
        try:
            wait_until(lambda: pending_count(client, "taskmon:events") == 0, "no stream entry left pending",
                       timeout=60)
        except AssertionError as exc:
            consumers = client.xinfo_consumers("taskmon:events", "taskmon")
            raise AssertionError(f"{exc}; consumers: {consumers}") from None

    run_failover(fresh_redis.url, pg_url, tmp_path, app, "stream", "relayed", start_worker, "tests.apps.relayed",
                 settled=nothing_pending)


@pytest.mark.slow
def test_two_daemons_on_rabbitmq_lose_nothing_when_the_leader_is_killed(
        amqp_url, pg_url, start_worker, tmp_path, celery_client):
    app = celery_client(amqp_url)
    run_failover(amqp_url, pg_url, tmp_path, app, "amqp", "sample", start_worker, "tests.apps.sample")


def test_one_leader_at_a_time_on_postgresql_and_the_next_leads_once_the_first_lets_go(pg_url):
    from monitor.cluster import Leadership

    engine = make_engine(pg_url)
    changes = []
    first = Leadership(engine, poll=0.2, on_change=lambda leading: changes.append(("first", leading)))
    second = Leadership(engine, poll=0.2, on_change=lambda leading: changes.append(("second", leading)))
    first.start()
    try:
        wait_until(first.is_leader, "the first leads", timeout=10)
        second.start()
        time.sleep(1.0)  # five attempts at the lock
        assert not second.is_leader() and first.is_leader()
        first.stop()
        first.join(5)
        wait_until(second.is_leader, "the second leads once the first's session ended", timeout=5)
        assert changes == [("first", True), ("first", False), ("second", True)]
    finally:
        for one in (first, second):
            one.stop()
            one.join(5)
            one.close()
        engine.dispose()


def test_check_fails_when_no_live_daemon_leads(pg_url):
    from monitor.health import check
    from storage.health import write_status

    engine = make_engine(pg_url)
    upgrade(engine)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        write_status(conn, daemon_id="a", hostname="h", pid=1, sources="stream", started_at=now, heartbeat_at=now,
                     counters={}, source_states={}, writer_lag=0.0, role="follower")
    health = check(engine, now, 30, "a")
    assert not health.ok and "no daemon leads the cluster" in health.reason
    with engine.begin() as conn:
        write_status(conn, daemon_id="b", hostname="h", pid=2, sources="stream", started_at=now, heartbeat_at=now,
                     counters={}, source_states={}, writer_lag=0.0, role="leader")
    health = check(engine, now, 30, "a")
    assert health.ok and health.reason.endswith("cluster leader b") and health.leader == "b"
    engine.dispose()


@pytest.mark.slow
def test_a_frozen_leader_is_replaced_within_the_takeover_bound_and_follows_when_it_wakes(fresh_redis, pg_url, tmp_path):
    """SIGSTOP: the leader's sessions stay open and its kernel still answers TCP keepalives, as for a hung
    process or a paused VM; the server ends the silent session (idle_session_timeout) and frees the lock."""
    import os
    import signal

    engine = make_engine(pg_url)
    upgrade(engine)
    first = DaemonProcess(fresh_redis.url, pg_url, "--source", "stream", logdir=tmp_path, env=CLUSTER_ENV)
    daemons = [first]
    try:
        first.wait_log("taskmon daemon")
        first_id = wait_until(lambda: leader_of(engine), "the first daemon leads")
        second = DaemonProcess(fresh_redis.url, pg_url, "--source", "stream", logdir=tmp_path, env=CLUSTER_ENV)
        daemons.append(second)
        second_id = wait_until(lambda: follower_besides(engine, first_id), "the second daemon follows")
        os.killpg(first.proc.pid, signal.SIGSTOP)
        wait_until(lambda: leader_of(engine) == second_id, "the second daemon leads", timeout=TAKEOVER)
        os.killpg(first.proc.pid, signal.SIGCONT)
        wait_until(lambda: statuses(engine)[first_id]["role"] == "follower", "the woken daemon follows")
        assert leader_of(engine) == second_id
        assert statuses(engine)[first_id]["counters"].get("leader.errors", 0) >= 1, "it found its session gone"
    finally:
        for d in daemons:
            if d.proc.poll() is None:
                os.killpg(d.proc.pid, signal.SIGCONT)
                assert d.terminate() == 0
        engine.dispose()
