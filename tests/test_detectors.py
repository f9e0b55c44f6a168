"""The detectors are pure functions: scripted rows and ``now`` in, findings out."""
from datetime import datetime, timedelta, timezone

from monitor.detectors.deadletters import dead_letter, recovery
from monitor.detectors.lost import gone_workers, lost_tasks, watching_since, worker_presence
from monitor.detectors.stuck import stuck_tasks
from monitor.detectors.timeout import Limits, running_over_limit

T = datetime(2026, 11, 23, 6, 0, 0, tzinfo=timezone.utc)
s = lambda n: T + timedelta(seconds=n)  # noqa: E731


def task(task_id="t1", state="STARTED", at=0, **fields):
    row = {"task_id": task_id, "name": "sample.sleep", "state": state, "state_at": s(at), "seen_at": s(0),
           "sent_at": s(0), "worker": "w1", "queue": "celery", "eta": None, "started_at": None, "stuck_at": None}
    row.update(fields)
    return row


def worker(host="w1", status="online", last=0, freq=2.0):
    return {"hostname": host, "status": status, "last_heartbeat": s(last), "freq": freq}


# -- timeout ----------------------------------------------------------------------------------

def test_limits_prefer_an_exact_name_then_the_first_matching_glob_then_the_default():
    limits = Limits(600, [("reports.*", 3600), ("reports.daily", 60), ("*", 900)])
    assert limits.for_name("reports.daily") == 60
    assert limits.for_name("reports.weekly") == 3600
    assert limits.for_name("billing.run") == 900
    assert Limits(600, [("a.b", 5)]).for_name(None) == 600
    assert limits.shortest() == 60


def test_a_task_started_longer_ago_than_its_limit_times_out_at_its_deadline():
    rows = [task("over", started_at=s(0)), task("under", started_at=s(5)),
            task("other", name="fast.job", started_at=s(8)), task("queued", state="RECEIVED", started_at=None)]
    found = running_over_limit(rows, s(10), Limits(600, [("sample.sleep", 10), ("fast.*", 1)]))
    assert {v.task_id: v.at for v in found} == {"over": s(10), "other": s(9)}
    assert all(v.state == "TIMEOUT" and v.exception_type == "TimeLimitExceeded" for v in found)
    assert "10s" in found[0].message and found[0].seen_state == "STARTED"


# -- lost -------------------------------------------------------------------------------------

def test_a_silent_worker_is_gone_after_the_multiple_of_its_heartbeat_interval():
    workers = [worker("w1", last=0), worker("w2", last=3)]
    assert gone_workers(workers, s(3.9), multiple=2, watch_since=s(-60)) == {}
    gone = gone_workers(workers, s(4), multiple=2, watch_since=s(-60))
    assert list(gone) == ["w1"] and gone["w1"].at == s(4) and gone["w1"].how == "silent"


def test_silence_proves_nothing_while_taskmon_was_not_listening():
    workers = [worker("w1", last=0)]
    assert gone_workers(workers, s(100), multiple=2, watch_since=None) == {}
    # the daemon (re)connected at 50: the worker gets its grace from then
    assert gone_workers(workers, s(53), multiple=2, watch_since=s(50)) == {}
    assert gone_workers(workers, s(54), multiple=2, watch_since=s(50))["w1"].at == s(54)


def test_a_worker_that_announced_no_interval_is_never_judged_by_silence():
    assert gone_workers([worker(freq=None, last=0)], s(1000), multiple=2, watch_since=s(-60)) == {}


def test_a_worker_that_went_offline_is_gone_after_a_grace_for_in_flight_events():
    workers = [worker("w1", status="offline", last=0, freq=None)]
    assert gone_workers(workers, s(3), multiple=2, watch_since=None) == {}
    gone = gone_workers(workers, s(4), multiple=2, watch_since=None)
    assert gone["w1"].how == "offline" and "went offline" in gone["w1"].message


def test_one_rule_says_whether_a_worker_is_online_offline_lost_or_unknown():
    def state(w, now, watch_since=s(-60), multiple=2):
        return worker_presence(w, s(now), multiple=multiple, watch_since=watch_since).state

    assert state(worker(last=0), 3.9) == "online"
    assert state(worker(last=0), 4) == "lost"
    assert state(worker(last=0), 4, multiple=3) == "online"  # lost_after_heartbeats, for every caller
    assert state(worker(last=0), 100, watch_since=None) == "unknown"  # not listening: silence proves nothing
    assert state(worker(last=0), 53, watch_since=s(50)) == "unknown"  # listening again, within its grace
    assert state(worker(status="lost", last=0), 100, watch_since=None) == "lost"  # the sweep's verdict stands
    assert state(worker(status="offline", last=0), 0, watch_since=None) == "offline"  # at once: it said so
    assert state(worker(freq=None, last=0), 1000) == "unknown"
    assert state({"hostname": "w1", "status": "online", "last_heartbeat": None, "freq": 2.0}, 0) == "unknown"


def test_taskmon_listens_from_the_later_of_the_live_feed_and_the_latest_gap():
    assert watching_since(None, s(5)) is None
    assert watching_since(s(0), None) == s(0)
    assert watching_since(s(0), s(5)) == s(5) and watching_since(s(9), s(5)) == s(9)


def test_tasks_received_or_started_on_a_gone_worker_are_lost():
    gone = gone_workers([worker("w1", last=0)], s(10), multiple=2, watch_since=s(-60))
    rows = [task("started", at=1, started_at=s(1)), task("received", state="RECEIVED", at=1),
            task("late", at=7, started_at=s(7)),  # an event after the last heartbeat: alive until 7
            task("done", state="SUCCESS", at=2), task("elsewhere", worker="w2", at=1)]
    found = lost_tasks(rows, gone, s(10))
    assert {v.task_id: v.at for v in found} == {"started": s(5), "received": s(5)}
    assert all(v.state == "LOST" and v.exception_type == "WorkerLostError" for v in found)
    assert "while the task was STARTED" in found[0].message
    assert {v.task_id for v in lost_tasks(rows, gone, s(11))} == {"started", "received", "late"}


# -- stuck ------------------------------------------------------------------------------------

def test_a_task_not_started_within_the_threshold_of_being_due_is_stuck_once_per_send():
    rows = [
        task("pending", state="PENDING", at=0),
        task("eta", state="RECEIVED", at=0, eta=s(30)),  # countdown: due at 30
        task("running", state="STARTED", at=1, started_at=s(1)),
        task("flagged", state="PENDING", at=0, stuck_at=s(10)),
        task("resent", state="PENDING", at=20, sent_at=s(20), stuck_at=s(10), started_at=s(5)),
    ]
    assert stuck_tasks(rows, s(9), after=10) == []
    found = stuck_tasks(rows, s(30), after=10)
    assert {f.task_id: f.at for f in found} == {"pending": s(10), "resent": s(30)}
    assert "in queue celery" in found[0].message
    assert {f.task_id for f in stuck_tasks(rows, s(40), after=10)} == {"pending", "eta", "resent"}


# -- dead letters -----------------------------------------------------------------------------

def test_dead_letters_for_tasks_that_ended_for_good_and_only_those():
    failed = task("f", state="FAILURE", at=9, exception="ValueError('x')", exception_type="ValueError",
                  started_at=s(1), finished_at=s(9))
    letter = dead_letter(failed)
    assert letter["reason"] == "failure" and letter["exception_type"] == "ValueError"
    assert letter["first_seen"] == s(0) and letter["last_seen"] == s(9) and letter["dead_at"] == s(9)
    assert dead_letter(task(state="TIMEOUT"))["reason"] == "timeout"
    assert dead_letter(task(state="LOST"))["reason"] == "lost"
    assert dead_letter(task(state="REJECTED", exception="Reject(requeue=False)"))["reason"] == "rejected"
    for alive in ("RETRY", "SUCCESS", "STARTED", "PENDING", "REVOKED"):
        assert dead_letter(task(state=alive)) is None
    assert dead_letter(task(state="REJECTED", exception="Reject(requeue=True)")) is None


def test_a_task_that_comes_back_resolves_its_letter_but_a_revoke_does_not():
    assert recovery("SUCCESS").startswith("recovered")
    assert "RECEIVED" in recovery("RECEIVED")
    assert recovery("REVOKED") is None and recovery("LOST") is None and recovery("FAILURE") is None
