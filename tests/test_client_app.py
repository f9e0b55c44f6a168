"""taskmon's Celery client apps (tasks.client.client_app) never become the process's current app.

A daemon or command embedded in a process with its own Celery app (a worker running `taskmon`
code, a test, a user's script) must not change what ``celery.current_app`` and shared tasks resolve to.
"""
import ast
from pathlib import Path

import pytest
from celery import Celery, current_app

from monitor.alerts.runner import AlertRunner
from monitor.daemon import EnableEvents
from monitor.ingest.reconcile import Reconciler
from storage.db import make_engine, upgrade
from tasks.client import client_app
from tasks.replay import celery_client
from tasks.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
# The Celery app of `celery -A tasks worker`, and the one factory for everything else.
BUILDS_APPS = {"tasks/application.py", "tasks/client.py"}


@pytest.fixture
def own_app():
    """The process's current app before the test, and still after it."""
    app = Celery("the-process-own-app", set_as_current=True)
    yield app
    app.close()


def test_the_reconciler_leaves_the_process_current_app_alone(own_app, sqlite_url):
    engine = make_engine(sqlite_url)
    upgrade(engine)
    reconciler = Reconciler(engine, Settings(broker_url="memory://", result_backend="cache+memory://"))
    assert current_app._get_current_object() is own_app
    assert reconciler.app.backend.get_task_meta("never-ran")["status"] == "PENDING"
    reconciler.app.close()
    engine.dispose()


def test_the_alert_runner_and_replay_and_enable_events_leave_the_process_current_app_alone(own_app, sqlite_url):
    runner = AlertRunner(make_engine(sqlite_url), Settings(broker_url="memory://"))
    runner.close()
    celery_client("memory://").close()
    broadcaster = EnableEvents("memory://")
    broadcaster()
    broadcaster.close()
    assert current_app._get_current_object() is own_app


def test_a_client_app_carries_the_callers_broker_backend_and_settings(own_app):
    app = client_app("memory://", "cache+memory://", name="taskmon-test", task_send_sent_event=True)
    assert (app.main, app.conf.broker_url, app.conf.result_backend) == ("taskmon-test", "memory://", "cache+memory://")
    assert app.conf.task_send_sent_event is True
    assert current_app._get_current_object() is own_app
    app.close()


def test_celery_apps_are_built_only_by_the_factory_and_the_tasks_app():
    builders = []
    for path in sorted([*ROOT.glob("monitor/**/*.py"), *ROOT.glob("tasks/**/*.py"), *ROOT.glob("storage/**/*.py"),
                        ROOT / "cli.py"]):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Celery":
                builders.append(f"{rel}:{node.lineno}")
    assert [b for b in builders if b.split(":")[0] not in BUILDS_APPS] == []
