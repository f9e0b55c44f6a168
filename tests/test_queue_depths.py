"""Queue-depth history: the leader's samples from a real Redis, their peaks per step, and their cleanup."""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from monitor.queue_sampler import QueueSampler
from tasks.settings import Settings
from storage.queue_depths import depth_history, record_depths
from storage.schema import queue_depths
from tasks.cleanup import cleanup_queue_depths
from tests.history_data import insert, now_utc, run
from tests.test_queues import publish


def samples(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(queue_depths.c.queue, queue_depths.c.messages)
                                               .order_by(queue_depths.c.queue, queue_depths.c.id))]


def test_the_leader_samples_the_default_queue_and_the_queues_of_the_last_day(engine, redis_url):
    now = now_utc()
    insert(engine, [run("q1", "mail.send", "SUCCESS", now - timedelta(minutes=5), runtime=1.0, queue="mail"),
                    run("q2", "old.job", "SUCCESS", now - timedelta(days=3), runtime=1.0, queue="old")])
    publish(redis_url, "mail", [None] * 3)
    publish(redis_url, "celery", [None])
    leading = [False]
    sampler = QueueSampler(engine, Settings(broker_url=redis_url), 60, lambda: leading[0], clock=lambda: now)
    assert sampler.sample() == 0 and samples(engine) == []  # a follower stores nothing
    leading[0] = True
    assert sampler.sample() == 2
    assert samples(engine) == [("celery", 1), ("mail", 3)]
    assert sampler.counters.get("queue_samples") == 1


def test_a_broker_that_cannot_answer_costs_one_counted_sample(engine):
    sampler = QueueSampler(engine, Settings(broker_url="redis://127.0.0.1:1/0"), 60, lambda: True)
    assert sampler.sample() == 0
    assert sampler.counters.get("queue_samples_failed") == 1 and samples(engine) == []


def test_the_history_holds_each_step_s_peak_and_none_where_nothing_was_sampled(engine):
    end = now_utc().replace(second=0)
    step = timedelta(minutes=2)
    with engine.begin() as conn:
        for minutes_ago, mail, celery in ((1, 4, 0), (2, 9, 1), (3, 7, None), (9, 2, 5), (90, 100, 100)):
            record_depths(conn, end - timedelta(minutes=minutes_ago, seconds=30),
                          [{"name": "mail", "messages": mail}, {"name": "celery", "messages": celery}])
    with engine.connect() as conn:
        h = depth_history(conn, end, step, 5)
    # Steps of two minutes ending at `end`: [-10, -8), [-8, -6), [-6, -4), [-4, -2), [-2, 0).
    assert h["queues"] == {"mail": [2, None, None, 9, 4], "celery": [5, None, None, 1, 0]}
    assert list(h["queues"]) == ["mail", "celery"]  # the deepest first
    assert h["latest"] == end - timedelta(minutes=1, seconds=30)


def test_cleanup_removes_samples_older_than_the_retention(engine):
    now = now_utc()
    with engine.begin() as conn:
        for days in (40, 31, 29, 1):
            record_depths(conn, now - timedelta(days=days), [{"name": "celery", "messages": days}])
    dry = cleanup_queue_depths(engine, now=now, days=30, chunk_size=1, dry_run=True)
    assert [d.count for d in dry] == [2] and len(samples(engine)) == 4
    done = cleanup_queue_depths(engine, now=now, days=30, chunk_size=1)
    assert [d.count for d in done] == [2] and samples(engine) == [("celery", 29), ("celery", 1)]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(queue_depths)).scalar() == 2
