"""Scripted Celery events replayed through the preparation code to merged rows: no Redis, no database, no sleeps.

In the manner of celery's t/unit/events/test_state.py: each scenario is the list of event dicts a
client and workers send, and ``replay`` runs them through what the daemon runs: every batch is
decoded and merged per task (monitor.ingest.prepare.merge_events: events.py, state.py), and the
batches' rows are merged into the stored row by storage.merge.merge_run, the Python twin of the
upsert (tests/test_storage_contract.py holds the twin to the SQL). Orders are exhaustive: every
permutation of a scenario, in one batch and one event per batch, gives the same row.
"""
from __future__ import annotations

import itertools
import random
from collections import Counter
from datetime import datetime, timezone

import orjson
import pytest
from celery import states as celery_states
from celery.events.state import TASK_EVENT_TO_STATE, State

from monitor.ingest.events import TASK_EVENT_STATES
from monitor.ingest.prepare import merge_events
from storage.merge import CUSTOM_RANK, STATE_RANK, merge_run
from storage.schema import task_runs
from tests.eventgen import T0

FIELD_MAX_BYTES = 16384
COLUMNS = [c.name for c in task_runs.columns if c.name not in ("task_id", "updated_at")]  # updated_at: commit time
NOT_NULL = {"retries": 0, "truncated": False, "redelivered": False}  # what the database stores for a missing value


def at(t: float) -> datetime:
    return datetime.fromtimestamp(T0 + t, timezone.utc)


def ev(kind: str, uuid: str, t: float, hostname: str = "w1@host", **fields) -> dict:
    """A task event as a worker (or, for task-sent, a client) sends it."""
    return {"type": f"task-{kind}", "uuid": uuid, "timestamp": T0 + t, "hostname": hostname, "pid": 1, "clock": 1,
            "utcoffset": 0, **fields}


def worker_ev(kind: str, t: float, hostname: str = "w1@host", **fields) -> dict:
    return {"type": f"worker-{kind}", "hostname": hostname, "timestamp": T0 + t, "freq": 2.0, "sw_ident": "py-celery",
            "sw_ver": "5.4.0", "sw_sys": "Linux", "pid": 1, "clock": 1, "utcoffset": 0, **fields}


def sent(uuid: str, t: float = 0, **fields) -> dict:
    return ev("sent", uuid, t, hostname="client@host", name="billing.charge", args="(42,)",
              kwargs="{'token': 's3cret'}", queue="finance", exchange="", routing_key="finance", root_id=uuid,
              parent_id=None, retries=0, eta=None, expires=None, **fields)


def received(uuid: str, t: float, retries: int = 0, hostname: str = "w1@host") -> dict:
    return ev("received", uuid, t, hostname, name="billing.charge", args="(42,)", kwargs="{'token': 's3cret'}",
              root_id=uuid, parent_id=None, retries=retries, eta=None, expires=None)


# Scenarios, as in celery's test_state.py (ev_task_states, ...): what the broker delivers, in order.
LIFECYCLE = [sent("ok"), received("ok", 1), ev("started", "ok", 2),
             ev("succeeded", "ok", 4, result="'paid'", runtime=1.5)]
FAILED = [sent("bad"), received("bad", 1), ev("started", "bad", 2),
          ev("failed", "bad", 3, exception="ValueError('card declined')", traceback="Traceback ...\nValueError")]
REVOKED = [sent("rv"), received("rv", 1), ev("started", "rv", 2), ev("revoked", "rv", 3, terminated=True, signum=15)]
# Failed once, retried under the same id, then succeeded.
RETRIED = [sent("rt"), received("rt", 1), ev("started", "rt", 2),
           ev("retried", "rt", 3, exception="ConnectionError('gateway down')", traceback="Traceback ..."),
           received("rt", 13, retries=1), ev("started", "rt", 14, retries=1),
           ev("succeeded", "rt", 15, result="'paid'", runtime=0.5)]
# A pool child published the retry and was descheduled; another child ran the retry to the end
# before the parent sent task-retried, stamped after the outcome.
LATE_RETRY = [sent("lr"), ev("started", "lr", 2), received("lr", 3, retries=1),
              ev("succeeded", "lr", 4, result="'paid'", runtime=0.5),
              ev("retried", "lr", 5, exception="ConnectionError('gateway down')")]
# acks_late: w1 died after starting it; the broker delivered the same attempt again, to w2.
REDELIVERED = [sent("rd"), received("rd", 1), ev("started", "rd", 2),
               received("rd", 30, hostname="w2@host"), ev("started", "rd", 31, "w2@host"),
               ev("succeeded", "rd", 33, "w2@host", result="None", runtime=2.0)]


def replay(batches: list[list[dict]]) -> tuple[dict[str, dict], dict[str, dict]]:
    """Task rows as stored after writing ``batches`` one after another, and the last batch's worker rows.

    (Across batches, the newest heartbeat is kept by the workers upsert in SQL, which
    tests/test_storage_contract.py covers.)
    """
    tasks: dict[str, dict] = {}
    workers: dict[str, dict] = {}
    for batch in batches:
        malformed: Counter = Counter()
        pending = merge_events([orjson.dumps(batch)], FIELD_MAX_BYTES, malformed)  # as Batch.piece arrives
        assert not malformed, malformed
        for task_id, row in pending.tasks.items():
            tasks[task_id] = merge_run(tasks.get(task_id), row)
        workers = pending.workers
    return {tid: stored(row) for tid, row in tasks.items()}, workers


def stored(row: dict) -> dict:
    """The row as the database holds it: every column, NULL (or its default) where nothing said otherwise."""
    return {col: row[col] if row.get(col) is not None else NOT_NULL.get(col) for col in COLUMNS}


def one_batch(events: list[dict]) -> dict:
    (row,) = replay([events])[0].values()
    return row


def event_per_batch(events: list[dict]) -> dict:
    (row,) = replay([[e] for e in events])[0].values()
    return row


def assert_every_order_gives(events: list[dict], expected: dict) -> int:
    """Every permutation of ``events``, in one batch and one event per batch, gives ``expected``."""
    orders = 0
    for order in itertools.permutations(events):
        order = list(order)
        assert one_batch(order) == expected, [e["type"] for e in order]
        assert event_per_batch(order) == expected, [e["type"] for e in order]
        orders += 1
    return orders


def celery_state(events: list[dict]) -> str:
    """The state celery's own event state machine (celery.events.state.State) ends in."""
    state = State()
    for event in events:
        state.event(dict(event, local_received=event["timestamp"]))
    (task,) = state.tasks.values()
    return task.state


# -- taskmon's tables against celery's ------------------------------------------------------------

def test_task_events_map_to_the_states_celery_gives_them():
    assert TASK_EVENT_STATES == {f"task-{kind}": state for kind, state in TASK_EVENT_TO_STATE.items()}


def test_state_ranks_order_celerys_states_as_celerys_precedence_does():
    # celery.states.precedence: a lower index wins; None stands for custom states.
    by_celery = sorted(celery_states.PRECEDENCE, key=lambda s: celery_states.precedence(s), reverse=True)
    by_taskmon = sorted([s for s in STATE_RANK if s in celery_states.PRECEDENCE] + [None],
                        key=lambda s: CUSTOM_RANK if s is None else STATE_RANK[s])
    assert by_taskmon == by_celery


# -- precedence -----------------------------------------------------------------------------------

def test_a_lifecycle_in_order_gives_the_complete_row():
    row = one_batch(LIFECYCLE)
    assert row == stored({
        "name": "billing.charge", "state": "SUCCESS", "state_at": at(4), "args": "(42,)",
        "kwargs": "{'token': '***'}", "result": "'paid'", "queue": "finance", "routing_key": "finance",
        "exchange": "", "worker": "w1@host", "root_id": "ok", "retries": 0, "seen_at": at(0), "sent_at": at(0),
        "received_at": at(1), "started_at": at(2), "finished_at": at(4), "runtime": 1.5, "queue_wait": 2.0,
        "received_attempt": 0, "received_first_at": at(1),
    })


@pytest.mark.parametrize("events", [LIFECYCLE, FAILED, REVOKED], ids=["succeeded", "failed", "revoked"])
def test_every_order_of_a_lifecycle_gives_the_row_of_the_order_it_happened_in(events):
    assert assert_every_order_gives(events, one_batch(events)) == 24


@pytest.mark.parametrize("events", [LIFECYCLE, FAILED, REVOKED], ids=["succeeded", "failed", "revoked"])
def test_without_retries_the_state_is_the_one_celerys_state_machine_reaches_in_every_order(events):
    for order in itertools.permutations(events):
        assert one_batch(list(order))["state"] == celery_state(list(order)) == celery_state(events)


def test_a_late_started_or_received_does_not_take_a_finished_task_back():
    late = [LIFECYCLE[0], LIFECYCLE[3], LIFECYCLE[2], LIFECYCLE[1]]
    row = event_per_batch(late)
    assert (row["state"], row["state_at"], row["result"], row["finished_at"]) == ("SUCCESS", at(4), "'paid'", at(4))


def test_a_revoke_keeps_its_reason_and_a_late_start_does_not_revive_it():
    row = event_per_batch([REVOKED[0], REVOKED[3], REVOKED[2]])
    assert (row["state"], row["exception"], row["exception_type"]) == ("REVOKED", "revoked (terminated, signal 15)",
                                                                       "Revoked")


def test_an_event_type_celery_does_not_send_is_counted_and_leaves_the_row_alone():
    malformed: Counter = Counter()
    pending = merge_events([[sent("c"), ev("progress", "c", 1, meta="{'done': 3}")]], FIELD_MAX_BYTES, malformed)
    assert malformed == {"malformed.unknown_type": 1} and pending.tasks["c"]["state"] == "PENDING"


# -- retries --------------------------------------------------------------------------------------

def test_a_retried_task_is_one_row_describing_its_latest_attempt():
    row = one_batch(RETRIED)
    assert (row["state"], row["retries"], row["result"], row["runtime"]) == ("SUCCESS", 1, "'paid'", 0.5)
    assert (row["exception"], row["exception_type"], row["traceback"]) == (None, None, None)  # the retry's, gone
    times = (row["sent_at"], row["received_at"], row["started_at"], row["finished_at"])
    assert times == (at(0), at(13), at(14), at(15))
    assert (row["received_attempt"], row["received_first_at"], row["redelivered"]) == (1, at(13), False)
    assert row["queue_wait"] == 14.0 and row["seen_at"] == at(0)


def test_every_order_of_a_retried_task_gives_the_same_row():
    assert assert_every_order_gives(RETRIED, one_batch(RETRIED)) == 5040


def test_every_split_of_a_retried_task_into_batches_gives_the_same_row():
    expected = one_batch(RETRIED)
    for cuts in itertools.chain.from_iterable(itertools.combinations(range(1, 7), n) for n in range(1, 7)):
        bounds = [0, *cuts, len(RETRIED)]
        (row,) = replay([RETRIED[a:b] for a, b in zip(bounds, bounds[1:])])[0].values()
        assert row == expected, cuts


def test_a_retried_task_that_fails_for_good_keeps_the_final_failure():
    events = RETRIED[:6] + [ev("failed", "rt", 15, retries=1, exception="ValueError('card declined')")]
    row = one_batch(events)
    assert (row["state"], row["exception"], row["exception_type"], row["retries"]) == (
        "FAILURE", "ValueError('card declined')", "ValueError", 1)
    assert assert_every_order_gives(events, row) == 5040


def test_a_retry_reported_after_the_next_attempt_ended_does_not_undo_its_outcome_in_any_order():
    row = one_batch(LATE_RETRY)
    assert (row["state"], row["result"], row["exception"], row["finished_at"]) == ("SUCCESS", "'paid'", None, at(4))
    assert assert_every_order_gives(LATE_RETRY, row) == 120


def test_the_row_of_a_task_between_attempts_is_the_retry_until_the_next_attempt_arrives():
    waiting = one_batch(RETRIED[:4])
    assert (waiting["state"], waiting["exception_type"], waiting["finished_at"]) == ("RETRY", "ConnectionError", at(3))
    again = event_per_batch(RETRIED[:5])
    assert (again["state"], again["retries"], again["exception"]) == ("RECEIVED", 1, "ConnectionError('gateway down')")


# -- redelivery (acks_late) -----------------------------------------------------------------------

def test_a_redelivered_attempt_is_flagged_and_the_row_describes_the_second_delivery():
    row = one_batch(REDELIVERED)
    assert (row["state"], row["worker"], row["retries"], row["redelivered"]) == ("SUCCESS", "w2@host", 0, True)
    assert (row["received_first_at"], row["received_at"], row["started_at"]) == (at(1), at(30), at(31))


def test_every_order_of_a_redelivery_gives_the_same_row():
    assert assert_every_order_gives(REDELIVERED, one_batch(REDELIVERED)) == 720


# -- duplicates -----------------------------------------------------------------------------------

@pytest.mark.parametrize("events", [LIFECYCLE, RETRIED, REDELIVERED], ids=["lifecycle", "retried", "redelivered"])
def test_every_event_delivered_twice_changes_nothing(events):
    expected = one_batch(events)
    twice = [e for e in events for _ in range(2)]
    assert one_batch(twice) == event_per_batch(twice) == expected
    assert event_per_batch(events + events[::-1]) == expected


def test_a_duplicated_receipt_is_not_a_redelivery():
    row = one_batch(LIFECYCLE[:2] + LIFECYCLE[1:])
    assert (row["redelivered"], row["received_first_at"]) == (False, at(1))


# -- several tasks and workers --------------------------------------------------------------------

def test_interleaved_tasks_and_heartbeats_merge_per_task_in_any_order():
    beats = [worker_ev("heartbeat", t, active=1, processed=int(t)) for t in (0.5, 2.5, 12.5)]
    stream = LIFECYCLE + FAILED + RETRIED + beats
    alone = {events[0]["uuid"]: one_batch(events) for events in (LIFECYCLE, FAILED, RETRIED)}
    rng = random.Random(11)
    for _ in range(50):
        order = rng.sample(stream, len(stream))
        cut = rng.randrange(1, len(order))
        assert replay([order])[0] == replay([order[:cut], order[cut:]])[0] == alone


def test_worker_events_in_any_order_keep_the_newest_and_the_first_seen():
    events = [worker_ev("online", 0), worker_ev("heartbeat", 2, active=3, processed=10),
              worker_ev("heartbeat", 4, active=1, processed=12), worker_ev("offline", 6, active=0, processed=14)]
    for order in itertools.permutations(events):
        (worker,) = replay([list(order)])[1].values()
        assert (worker["status"], worker["last_heartbeat"], worker["first_seen"]) == ("offline", at(6), at(0))
        assert (worker["active"], worker["processed"], worker["freq"]) == (0, 14, 2.0)
        assert worker["software"] == "py-celery 5.4.0 Linux"
