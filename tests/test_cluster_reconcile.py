"""Reconciliation after gaps with several daemons on one PostgreSQL history: the leader settles every
gap, whichever daemon saw it, and no gap twice across a leader change."""
import os
import signal
from datetime import datetime, timedelta, timezone

import pytest
import redis
from sqlalchemy import select

from storage.db import make_engine, upgrade
from storage.health import record_gap, set_reconciled, unreconciled_gaps
from storage.schema import receiver_gaps
from tests.cluster_helpers import follower_besides, leader_of, statuses, wait_until
from tests.daemon_helpers import wait_for_runs
from tests.services import DaemonProcess

CLUSTER_ENV = {"TASKMON_STATUS_INTERVAL": "1"}
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def test_a_gap_is_marked_reconciled_once_and_lossless_or_old_gaps_are_not_offered(engine):
    with engine.begin() as conn:
        lossy = record_gap(conn, source="pubsub", reason="redis_disconnect", started_at=T0, ended_at=T0,
                           now=T0, daemon_id="h-1")
        record_gap(conn, source="stream", reason="redis_disconnect", started_at=T0, ended_at=T0, now=T0,
                   events_lost=0, daemon_id="h-1")  # the broker kept the events: nothing to ask
        record_gap(conn, source="pubsub", reason="overflow", started_at=T0, ended_at=T0,
                   now=T0 - timedelta(days=2), events_lost=5)  # older than any result backend keeps
    with engine.connect() as conn:
        todo = unreconciled_gaps(conn, T0 - timedelta(days=1))
    assert [(g["id"], g["daemon_id"]) for g in todo] == [(lossy, "h-1")]
    with engine.begin() as conn:
        assert set_reconciled(conn, lossy, 3, T0, "h-0")
    with engine.begin() as conn:  # a second daemon, a moment late, finds it done
        assert not set_reconciled(conn, lossy, 0, T0 + timedelta(seconds=1), "h-1")
    with engine.connect() as conn:
        row = conn.execute(select(receiver_gaps).where(receiver_gaps.c.id == lossy)).mappings().one()
        assert unreconciled_gaps(conn, T0 - timedelta(days=1)) == []
    assert (row["reconciled"], row["reconciled_at"], row["reconciled_by"]) == (3, T0, "h-0")


# -- two daemons, each reading pub/sub as a Redis user of its own, so that the test can make either deaf ----

class RedisUsers:
    def __init__(self, port: int):
        self.port = port
        self.admin = redis.Redis(port=port)

    def add(self, user: str) -> str:
        self.admin.acl_setuser(user, enabled=True, passwords=["+pw"], categories=["+@all"], keys=["*"],
                               channels=["*"])
        return f"redis://{user}:pw@127.0.0.1:{self.port}/0"

    def cut(self, user: str) -> None:
        """The user's connections dropped and refused until ``restore``: its daemon hears nothing meanwhile."""
        self.admin.acl_setuser(user, enabled=False)
        self.admin.client_kill_filter(user=user)

    def restore(self, user: str) -> None:
        self.admin.acl_setuser(user, enabled=True)


def gaps_of(engine, daemon_id):
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(receiver_gaps).where(receiver_gaps.c.daemon_id == daemon_id)
                                              .order_by(receiver_gaps.c.id)).mappings()]


def counter(engine, daemon_id, name):
    return statuses(engine)[daemon_id]["counters"].get(name, 0)


def beats_later(engine, daemon_id, n=2):
    """Wait for ``n`` more heartbeats of the daemon (each one stores its counters)."""
    first = statuses(engine)[daemon_id]["heartbeat_at"]
    wait_until(lambda: (statuses(engine)[daemon_id]["heartbeat_at"] - first).total_seconds() >= n - 0.5,
               f"{n} more heartbeats of {daemon_id}", timeout=30)


@pytest.mark.slow
def test_the_leader_reconciles_the_gaps_a_follower_saw_and_none_twice_across_a_leader_change(
        fresh_redis, pg_url, start_worker, tmp_path, celery_client):
    users = RedisUsers(fresh_redis.port)
    backend = f"redis://127.0.0.1:{fresh_redis.port}/1"
    engine = make_engine(pg_url)
    upgrade(engine)
    env = dict(CLUSTER_ENV, TASKMON_RESULT_BACKEND=backend)
    a = DaemonProcess(users.add("a"), pg_url, "--source", "pubsub", logdir=tmp_path, env=env)
    daemons = [a]
    try:
        a.wait_log("taskmon daemon")
        a_id = wait_until(lambda: leader_of(engine), "the first daemon leads")
        b = DaemonProcess(users.add("b"), pg_url, "--source", "pubsub", logdir=tmp_path, env=env)
        daemons.append(b)
        b_id = wait_until(lambda: follower_besides(engine, a_id), "the second daemon follows")
        start_worker(fresh_redis.url, env={"SAMPLE_RESULT_BACKEND": backend})
        app = celery_client(fresh_redis.url, result_backend=backend)
        slow = [app.send_task("sample.sleep", (4,)) for _ in range(2)]
        ids = [r.id for r in slow]
        wait_for_runs(engine, ids, {"STARTED"}, timeout=30)

        # Both daemons deaf while the tasks end: the whole cluster misses their last events.
        users.cut("a")
        users.cut("b")
        wait_until(lambda: all(r.ready() for r in slow), "the tasks' results in the backend", timeout=30)
        users.restore("b")  # the follower is back first and records the gap
        gap = wait_until(lambda: gaps_of(engine, b_id), "the follower records its gap", timeout=30)[0]
        assert gap["events_lost"] is None and gap["reason"] == "redis_disconnect"
        rows = wait_for_runs(engine, ids, {"SUCCESS"}, timeout=30)  # no event could say so: the backend did
        assert {rows[i]["result"] for i in ids} == {"4"}
        gap = wait_until(lambda: gaps_of(engine, b_id)[0]["reconciled_at"] and gaps_of(engine, b_id)[0],
                         "the follower's gap marked reconciled")
        assert (gap["reconciled_by"], gap["reconciled"]) == (a_id, 2), "by the leader, for both tasks"
        users.restore("a")
        own = wait_until(lambda: [g for g in gaps_of(engine, a_id) if g["reconciled_at"]], "the leader's own gap")
        assert own[0]["reconciled_by"] == a_id
        beats_later(engine, b_id)
        assert counter(engine, b_id, "reconcile.gaps") == 0, "a follower reconciles nothing"

        # The leader frozen (it holds the lock, and does nothing) when the follower sees another gap.
        os.killpg(a.proc.pid, signal.SIGSTOP)
        users.cut("b")
        users.restore("b")
        left = wait_until(lambda: gaps_of(engine, b_id)[1:], "the follower's second gap", timeout=30)[0]
        beats_later(engine, b_id)
        assert gaps_of(engine, b_id)[1]["reconciled_at"] is None, "no one reconciles it: the leader is frozen"
        a.kill()
        wait_until(lambda: leader_of(engine) == b_id, "the follower leads once the leader is gone", timeout=20)
        done = wait_until(lambda: gaps_of(engine, b_id)[1]["reconciled_at"] and gaps_of(engine, b_id)[1],
                          "the new leader reconciles the gap the old one left", timeout=30)
        assert done["id"] == left["id"] and done["reconciled_by"] == b_id
        beats_later(engine, b_id)
        # Each gap once: what the first leader reconciled stays as it was, and the new one did one gap.
        assert gaps_of(engine, b_id)[0] == gap and [g["reconciled_by"] for g in gaps_of(engine, a_id)] == [a_id]
        assert counter(engine, b_id, "reconcile.gaps") == 1
        assert counter(engine, b_id, "reconcile.already_done") == 0
    finally:
        for d in daemons:
            if d.proc.poll() is None:
                assert d.terminate() == 0
        engine.dispose()
