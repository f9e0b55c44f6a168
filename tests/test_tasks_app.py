"""The tasks Celery app is configured the way the Celery setup guides configure theirs."""
import pytest
from celery.app.utils import find_app
from celery.utils.time import get_exponential_backoff_interval

from tasks.settings import Settings
from tasks.application import QUEUE_NAMES, TaskmonCelery, make_app, task_names
from tasks.policies import AlertTask, BadInput, CriticalTask, DefaultTask


@pytest.fixture
def app():
    return make_app(Settings(broker_url="memory://", timezone="Asia/Shanghai"), set_as_current=False)


def test_celery_finds_the_app_as_tasks_app_and_tasks_celery(monkeypatch):
    monkeypatch.setenv("TASKMON_BROKER_URL", "memory://")
    import tasks

    assert isinstance(find_app("tasks"), TaskmonCelery)
    assert tasks.celery is tasks.app


def test_worker_settings_follow_the_seeds(app):
    conf = app.conf
    assert conf.timezone == "Asia/Shanghai" and conf.enable_utc is True
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (300, 600)
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.result_expires == 3600
    assert conf.worker_send_task_events and conf.task_send_sent_event and conf.task_track_started
    assert conf.beat_scheduler == "tasks.scheduler:DatabaseScheduler"
    assert [q.name for q in conf.task_queues] == list(QUEUE_NAMES)
    assert conf.task_default_queue == "default"


def test_empty_result_backend_means_none_and_a_set_one_is_used():
    assert make_app(Settings(broker_url="memory://"), set_as_current=False).conf.result_backend is None
    app = make_app(Settings(broker_url="memory://", result_backend="redis://127.0.0.1:1/2"), set_as_current=False)
    assert app.conf.result_backend == "redis://127.0.0.1:1/2"


@pytest.mark.parametrize("task, queue", [
    ("billing.check_pending_bills", "finance"),
    ("reports.generate_weekly_report", "reports"),
    ("notifications.send_notification_email", "email"),
    ("notifications.cleanup_old_notifications", "low_priority"),
    ("cleanup.cleanup_task_history", "low_priority"),
    ("maintenance.backup_database", "maintenance"),
    ("maintenance.health_check", "high_priority"),
    ("alerts.send_alert", "alerts"),
    ("tasks.alerts.send_alert", "alerts"),
    ("someone_else.task", "default"),
])
def test_tasks_are_routed_by_module(app, task, queue):
    assert app.amqp.router.route({}, task)["queue"].name == queue


def test_task_names_are_module_dot_task_and_every_module_is_known(app):
    names = task_names(app)
    assert len(names) == 22
    assert all(n.count(".") == 1 for n in names)
    assert {n.split(".")[0] for n in names} == {"cleanup", "reports", "billing", "notifications", "maintenance", "demo",
                                                 "alerts"}


def test_retry_policies_default_and_critical(app):
    task_names(app)
    default, critical = app.tasks["reports.generate_daily_report"], app.tasks["billing.check_pending_bills"]
    assert isinstance(default, DefaultTask) and not isinstance(default, CriticalTask)
    assert isinstance(critical, CriticalTask)
    assert (default.max_retries, default.retry_backoff, default.retry_backoff_max) == (3, 60, 600)
    assert (critical.max_retries, critical.retry_backoff, critical.retry_backoff_max) == (5, 30, 600)
    assert default.retry_jitter and critical.retry_jitter
    assert default.autoretry_for == (Exception,) and default.dont_autoretry_for == (BadInput,)
    # Celery's backoff with these settings: 60, 120, 240 s ceilings, never more than 600.
    assert [get_exponential_backoff_interval(60, n, 600, full_jitter=False) for n in range(5)] == [60, 120, 240, 480, 600]


def test_health_check_is_not_retried(app):
    task_names(app)
    assert app.tasks["maintenance.health_check"].autoretry_for == ()


def test_alert_task_retries_long_with_a_capped_jittered_backoff_from_settings():
    app = make_app(Settings(broker_url="memory://", alert_retry_delay=2, alert_retry_max_delay=10), set_as_current=False)
    task_names(app)
    task = app.tasks["alerts.send_alert"]
    assert isinstance(task, AlertTask) and not isinstance(task, DefaultTask)  # never auto-retried on any error
    for retries, ceiling in [(0, 2), (1, 4), (2, 8), (3, 10), (50, 10)]:
        delay = task.retry_delay(retries)
        assert ceiling / 2 <= delay <= ceiling
