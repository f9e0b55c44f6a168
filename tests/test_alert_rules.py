"""Alert rules and grouping as pure functions: scripted state and ``now``, no database, no sleeping."""
from datetime import datetime, timedelta, timezone

import pytest

from monitor.alerts import conditions as cond
from monitor.alerts.grouping import plan
from tasks.alert_render import render
from tasks.alert_rules import Rule, RuleError, default_rules, parse_rules
from monitor.detectors import StuckTask

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
DIGEST = timedelta(minutes=15)
RULES = {r.name: r for r in default_rules()}


def at(s: float) -> datetime:
    return NOW + timedelta(seconds=s)


def letter(task_id, t=0, name="billing.charge", reason="failure", exc="ValueError"):
    return {"task_id": task_id, "name": name, "reason": reason, "exception_type": exc,
            "exception": f"{exc}('bad')", "dead_at": at(t)}


def step(groups, occurrences=(), conditions=(), *, now, evaluated=(), holds=None):
    """One evaluation: the plan's actions, and the groups as the next evaluation reads them."""
    p = plan(groups, occurrences, conditions, evaluated=evaluated, holds=holds or {}, now=now, digest_interval=DIGEST)
    new = dict(groups)
    new.update(p.groups)
    return [(a.kind, a.group.key, a.count) for a in p.actions], {k: g for k, g in new.items() if g.status != "resolved"}


def test_first_failure_fires_at_once_and_the_rest_go_into_one_digest_with_the_count():
    occ = cond.dead_letter_occurrences([letter(f"t{i}", t=i * 0.01) for i in range(1000)], RULES, at(10))
    actions, groups = step({}, occ, now=at(10))
    assert actions == [("fire", "failed:billing.charge:ValueError", 1)]
    assert step(groups, now=at(10) + DIGEST - timedelta(seconds=1))[0] == []
    actions, groups = step(groups, now=at(10) + DIGEST)
    assert actions == [("digest", "failed:billing.charge:ValueError", 999)]
    assert groups["failed:billing.charge:ValueError"].total_count == 1000


def test_a_quiet_group_closes_without_mail_and_the_next_failure_fires_again():
    occ = cond.dead_letter_occurrences([letter("a")], RULES, at(1))
    _, groups = step({}, occ, now=at(1))
    actions, groups = step(groups, now=at(1) + DIGEST)
    assert actions == [] and groups == {}
    occ = cond.dead_letter_occurrences([letter("b", t=2000)], RULES, at(2000))
    assert step(groups, occ, now=at(2000))[0] == [("fire", "failed:billing.charge:ValueError", 1)]


def test_groups_are_per_task_name_and_exception_type():
    letters = [letter("a"), letter("b", exc="KeyError"), letter("c", name="reports.daily"),
               letter("d", reason="timeout", exc="TimeLimitExceeded"), letter("e", reason="lost", exc="WorkerLostError")]
    actions, _ = step({}, cond.dead_letter_occurrences(letters, RULES, at(1)), now=at(1))
    assert sorted(k for _, k, _ in actions) == [
        "failed:billing.charge:KeyError", "failed:billing.charge:ValueError", "failed:reports.daily:ValueError",
        "lost:billing.charge:WorkerLostError", "timeout:billing.charge:TimeLimitExceeded"]


def test_alert_tasks_never_alert_about_themselves_and_name_globs_select():
    rules = dict(RULES, failed=Rule("failed", names=("billing.*",)))
    letters = [letter("a", name="alerts.send_alert"), letter("b", name="reports.daily"), letter("c")]
    assert [o.task_id for o in cond.dead_letter_occurrences(letters, rules, at(1))] == ["c"]


def test_old_deaths_found_by_a_first_sweep_are_not_news():
    assert cond.dead_letter_occurrences([letter("old", t=-7200)], RULES, NOW) == []


def test_stuck_tasks_are_occurrences_of_the_stuck_rule():
    stuck = [StuckTask("s1", "reports.daily", at(0), None, "not started")]
    assert [(o.rule, o.key) for o in cond.stuck_occurrences(stuck, RULES, at(1))] == [("stuck", "stuck:reports.daily:-")]


def worker(status, last=0, host="w1@host", freq=2.0):
    return {"hostname": host, "status": status, "last_heartbeat": at(last), "freq": freq}


def workers_at(rows, now, watch_since=None):
    return cond.worker_conditions(rows, now, multiple=2, watch_since=watch_since)


def test_worker_offline_fires_once_and_resolves_once_when_it_is_back():
    ev = ("worker_offline",)
    actions, groups = step({}, conditions=workers_at([worker("lost")], at(5)), now=at(5), evaluated=ev)
    assert actions == [("fire", "worker_offline:w1@host", 1)]
    actions, groups = step(groups, conditions=workers_at([worker("lost")], at(15)), now=at(15), evaluated=ev)
    assert actions == []
    actions, groups = step(groups, conditions=workers_at([worker("online", 23)], at(25)), now=at(25), evaluated=ev)
    assert actions == [("resolved", "worker_offline:w1@host", 0)] and groups == {}


def test_worker_offline_uses_the_detectors_rule_for_silence():
    silent = [worker("online", last=0)]
    assert workers_at(silent, at(3.9), watch_since=at(-60)) == []
    (found,) = workers_at(silent, at(4), watch_since=at(-60))  # 2 x its 2 s interval, while listening
    assert found.key == "worker_offline:w1@host" and "lost" in found.message and found.detail["status"] == "lost"
    assert workers_at(silent, at(100)) == []  # not listening: silence proves nothing, nothing fires
    assert workers_at(silent, at(100), watch_since=at(98)) == []  # listening again, within its grace
    (gone,) = workers_at([worker("offline", last=0)], at(1))
    assert "offline: it shut down" in gone.message


def test_a_condition_whose_input_could_not_be_read_neither_fires_nor_resolves():
    _, groups = step({}, conditions=workers_at([worker("offline")], at(5)), now=at(5),
                     evaluated=("worker_offline",))
    assert step(groups, now=at(10), evaluated=())[0] == []


def test_workers_gone_long_before_are_history():
    assert workers_at([worker("offline", last=-2 * 86400)], NOW) == []


def test_queue_depth_fires_only_after_holding_for_the_configured_time_and_resolves_when_drained():
    rule = Rule("queue_depth", threshold=100, for_seconds=300)
    deep = [{"name": "reports", "messages": 150}]
    ev, holds = ("queue_depth",), {"queue_depth": 300}
    actions, groups = step({}, conditions=cond.queue_conditions(deep, rule), now=at(0), evaluated=ev, holds=holds)
    assert actions == [] and groups["queue_depth:reports"].status == "watching"
    actions, groups = step(groups, conditions=cond.queue_conditions(deep, rule), now=at(300), evaluated=ev, holds=holds)
    assert actions == [("fire", "queue_depth:reports", 1)]
    drained = cond.queue_conditions([{"name": "reports", "messages": 3}], rule)
    assert step(groups, conditions=drained, now=at(400), evaluated=ev, holds=holds)[0] == [
        ("resolved", "queue_depth:reports", 0)]


def test_a_short_spike_in_a_queue_sends_nothing():
    rule = Rule("queue_depth", threshold=100, for_seconds=300)
    ev, holds = ("queue_depth",), {"queue_depth": 300}
    _, groups = step({}, conditions=cond.queue_conditions([{"name": "q", "messages": 500}], rule), now=at(0),
                     evaluated=ev, holds=holds)
    actions, groups = step(groups, now=at(60), evaluated=ev, holds=holds)
    assert actions == [] and groups == {}


def test_failure_rate_needs_the_minimum_count_and_resolves_when_normal():
    rule = Rule("failure_rate", percent=20, min_count=10)
    assert cond.rate_conditions({"a": {"total": 9, "failed": 9}}, rule) == []
    assert cond.rate_conditions({"a": {"total": 10, "failed": 2}}, rule) == []
    high = cond.rate_conditions({"a": {"total": 10, "failed": 3}, "alerts.send_alert": {"total": 10, "failed": 10}}, rule)
    assert [c.key for c in high] == ["failure_rate:a"]
    actions, groups = step({}, conditions=high, now=at(0), evaluated=("failure_rate",))
    assert actions == [("fire", "failure_rate:a", 1)]
    normal = cond.rate_conditions({"a": {"total": 30, "failed": 3}}, rule)
    assert step(groups, conditions=normal, now=at(60), evaluated=("failure_rate",))[0] == [
        ("resolved", "failure_rate:a", 0)]


def test_a_periodic_task_is_missed_when_overdue_past_the_grace_and_never_ran_rows_are_ignored():
    rule = Rule("missed_run", grace_seconds=60)
    row = {"name": "hourly-report", "task": "reports.generate_hourly_report", "enabled": True,
           "last_run_at": at(-3600), "due_at": at(0)}
    assert cond.missed_runs([row], rule, at(60)) == []
    assert [c.key for c in cond.missed_runs([row], rule, at(61))] == ["missed_run:hourly-report"]
    assert cond.missed_runs([dict(row, last_run_at=None, due_at=None)], rule, at(7200)) == []


def test_config_table_overrides_defaults_and_refuses_typos():
    rules = {r.name: r for r in parse_rules({"failed": {"names": ["billing.*"], "recipients": ["b@example.com"]},
                                             "queue_depth": {"threshold": 10, "for_seconds": 0.5},
                                             "stuck": {"enabled": False}})}
    assert rules["failed"].names == ("billing.*",) and rules["failed"].recipients == ("b@example.com",)
    assert rules["queue_depth"].threshold == 10 and rules["queue_depth"].for_seconds == 0.5
    assert not rules["stuck"].enabled and rules["lost"].enabled
    assert not any(r.enabled for r in parse_rules({"enabled": False}))
    assert parse_rules('{"timeout": {"enabled": false}}')[1].enabled is False
    with pytest.raises(RuleError, match="alerts.failed: unknown option 'name'"):
        parse_rules({"failed": {"name": "x"}})
    with pytest.raises(RuleError, match="unknown rule 'faild'"):
        parse_rules({"faild": {}})
    with pytest.raises(RuleError, match="alerts.queue_depth.threshold: expected a whole number"):
        parse_rules({"queue_depth": {"threshold": "many"}})


def test_rendered_email_redacts_secrets_even_when_the_stored_row_has_them():
    alert = {"id": 7, "rule": "failed", "kind": "fire", "task_name": "auth.login", "exception_type": "PermissionError",
             "task_id": "abc", "message": "PermissionError('bad password=hunter2')", "detail": {},
             "occurrences": 1, "total_count": 1, "first_seen": NOW, "last_seen": NOW, "created_at": NOW}
    run = {"state": "FAILURE", "exception": "PermissionError('bad password=hunter2')", "args": "('bob',)",
           "kwargs": "{'password': 'hunter2', 'token': 's3cr3t'}", "worker": "w1", "queue": "celery",
           "runtime": 0.25, "retries": 0, "traceback": "Traceback...\n  login(password='hunter2')\nPermissionError"}
    subj, text, html = render(alert, run, timezone.utc, "UTC")
    assert subj == "[taskmon] auth.login failed: PermissionError"
    for part in (subj, text, html):
        assert "hunter2" not in part and "s3cr3t" not in part
    assert "taskmon show abc" in text and "Runtime:" in text and "0.250 s" in text


def test_a_high_failure_rate_is_not_raised_again_for_a_task_whose_failures_are_already_mailed():
    rule = Rule("failure_rate", percent=20, min_count=10)
    high = cond.rate_conditions({"a": {"total": 10, "failed": 10}, "b": {"total": 10, "failed": 10}}, rule)
    assert [c.target for c in cond.drop_covered_rates(high, {"a"}, set())] == ["b"]
    assert [c.target for c in cond.drop_covered_rates(high, {"a"}, {"failure_rate:a"})] == ["a", "b"]
