"""Duplicate and reordered event replays through the daemon give identical rows, on both databases."""
import random
import time

import redis
from sqlalchemy import select

from storage.schema import task_runs
from tests.daemon_helpers import running_daemon, wait_for_runs
from tests.eventgen import T0, lifecycle, publish


def scripted_events():
    """Tasks that succeed, fail, and retry twice before succeeding (same id throughout)."""
    rng = random.Random(3)
    tasks = [lifecycle(f"ok-{i}", t=T0 + i) for i in range(20)]
    tasks += [lifecycle(f"bad-{i}", t=T0 + 100 + i, fail=True) for i in range(10)]
    for i in range(10):
        tid, t = f"retry-{i}", T0 + 200 + i
        first = lifecycle(tid, t=t)[:3]
        retried = {"type": "task-retried", "uuid": tid, "hostname": "w1@host", "exception": "RuntimeError('x')",
                   "traceback": "tb", "timestamp": t + 0.03}
        second = [dict(e, timestamp=e["timestamp"] + 1, retries=1) for e in lifecycle(tid, t=t)]
        tasks.append(first + [retried] + second[1:])
    return tasks, rng


def ingest(broker_url, db_url, messages):
    client = redis.Redis.from_url(broker_url)
    with running_daemon(broker_url, db_url) as daemon:
        for i, msg in enumerate(messages):
            publish(client, msg)
            if i % 37 == 0:
                time.sleep(0.06)  # let some arrive in later batches than their neighbours
        ids = {m["uuid"] for msg in messages for m in (msg if isinstance(msg, list) else [msg])}
        wait_for_runs(daemon.engine, ids, {"SUCCESS", "FAILURE"}, timeout=30)
        time.sleep(0.3)
        with daemon.engine.connect() as conn:
            rows = conn.execute(select(task_runs)).mappings().all()
    return {r["task_id"]: {k: v for k, v in r.items() if k != "updated_at"} for r in rows}


def test_duplicates_and_reordering_give_identical_rows(redis_url, db_url, tmp_path):
    tasks, rng = scripted_events()
    in_order = [e for events in tasks for e in events]
    shuffled = in_order + rng.sample(in_order, len(in_order) // 2)  # half of them twice
    rng.shuffle(shuffled)
    # Some as task.multi batches of random size, like prefork workers send them.
    batched, i = [], 0
    while i < len(shuffled):
        n = rng.randint(1, 5)
        batched.append(shuffled[i:i + n] if n > 1 else shuffled[i])
        i += n
    expected = ingest(redis_url, f"sqlite:///{tmp_path / 'reference.db'}", in_order)
    actual = ingest(redis_url, db_url, batched)
    assert set(actual) == set(expected)
    for task_id, row in expected.items():
        assert actual[task_id] == row, task_id
    assert {r["state"] for k, r in actual.items() if k.startswith("retry")} == {"SUCCESS"}
    assert {r["retries"] for k, r in actual.items() if k.startswith("retry")} == {1}
