"""The dashboard in headless Chromium against a real `taskmon serve`, `taskmon run`, Celery workers and Redis."""
from __future__ import annotations

import ast
import json
import re
import time
from urllib.parse import quote

import pytest
from celery import Celery

from monitor.redis_server import RedisServer
from storage.db import make_engine, upgrade
from storage.history import state_counts
from tests.api_helpers import ApiServer
from tests.browser import Watched, chromium_path, log_in, screenshot, taskmon
from tests.daemon_helpers import wait_for_runs
from tests.services import DaemonProcess, Worker

pytestmark = pytest.mark.slow

ZONE = "Asia/Shanghai"
# No quotes in the payloads: the history stores args as repr(), which would escape them.
PAYLOAD = "<script>alert(1)</script><img src=x onerror=alert(2)>"
XSS_QUEUE = "q<script>alert(3)</script><img src=x onerror=alert(4)>"
XSS_HOST = "w<img src=x onerror=alert(5)>@xss"
SEARCH_VALUE = "needle-4711"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Redis, a history, `taskmon run`, two workers (one with a hostile hostname on a hostile queue),
    `taskmon serve` in Asia/Shanghai time, and a viewer's and an operator's token."""
    chromium = chromium_path()
    tmp = tmp_path_factory.mktemp("dashboard")
    redis = RedisServer().start()
    db_url = f"sqlite:///{tmp / 'taskmon.db'}"
    engine = make_engine(db_url)
    upgrade(engine)
    started = []
    try:
        # Queue depths sampled every second: the Queues page's history fills while the tests run.
        daemon = DaemonProcess(redis.url, db_url, logdir=tmp, env={"TASKMON_QUEUE_SAMPLE_INTERVAL": "1"})
        started.append(daemon)
        daemon.wait_log("sources")
        for hostname, queues in (("w1@taskmon-demo", "celery"), (XSS_HOST, XSS_QUEUE)):
            worker = Worker("tests.apps.sample", redis.url, queues=queues, concurrency=1, hostname=hostname, logdir=tmp)
            started.append(worker)
            worker.wait_ready()
        tokens = {role: taskmon("token", "create", "--name", f"{role}-1", "--role", role, db_url=db_url)
                  for role in ("viewer", "operator", "admin")}
        server = ApiServer(db_url, "--timezone", ZONE, broker_url=redis.url, logdir=tmp)
        started.append(server)
        server.wait_ready()
        client = Celery("dashboard-test", broker=redis.url, set_as_current=False)
        client.conf.update(task_send_sent_event=True, broker_connection_retry_on_startup=True)
        from playwright.sync_api import sync_playwright

        pw = sync_playwright().start()
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield {"url": server.url, "engine": engine, "tokens": tokens, "client": client, "browser": browser,
               "server": server, "daemon": daemon}
        browser.close()
        pw.stop()
        client.close()
    finally:
        for proc in reversed(started):
            proc.stop()
            print(f"--- {proc.log.name} (last 40 lines)", *proc.log.read_text(errors="replace").splitlines()[-40:],
                  sep="\n")
        engine.dispose()
        redis.close()


@pytest.fixture
def page(bench):
    context = bench["browser"].new_context(viewport={"width": 1280, "height": 900})
    watched = Watched(context.new_page())
    yield watched
    context.close()


def send(bench, name: str, *args, queue: str = "celery") -> str:
    return bench["client"].send_task(name, args=list(args), queue=queue).id


def finished(bench, *task_ids: str) -> dict:
    return wait_for_runs(bench["engine"], task_ids, states={"SUCCESS", "FAILURE"})


def test_login_shows_the_overview_with_the_counts_the_database_holds(bench, page):
    ids = [send(bench, "sample.add", i, i) for i in range(6)] + [send(bench, "sample.fail", "overview") for _ in range(2)]
    finished(bench, *ids)
    log_in(page.page, bench["url"], bench["tokens"]["viewer"])
    with bench["engine"].connect() as conn:
        counts = state_counts(conn)
    shown = {card.get_attribute("data-state"): int(card.locator(".n").inner_text())
             for card in page.page.locator("#state-counts .card").all()}
    assert shown == counts and counts["SUCCESS"] >= 6 and counts["FAILURE"] >= 2
    assert ZONE in page.page.locator("header .zone").inner_text()
    assert page.page.locator("svg.chart").count() >= 3
    screenshot(page.page, "overview")
    page.quiet()


def test_a_failing_task_sent_while_the_tasks_page_is_open_appears_without_a_reload(bench, page):
    log_in(page.page, bench["url"], bench["tokens"]["viewer"])
    page.page.goto(bench["url"] + "/tasks")
    page.page.wait_for_selector("#live-status:text('live')")
    page.page.evaluate("window.__notReloaded = true")
    task_id = send(bench, "sample.fail", "live failure")
    row = page.page.locator(f'#runs tr[data-task-id="{task_id}"]')
    row.locator("td[data-col=state]:text('FAILURE')").wait_for(timeout=20_000)
    assert page.page.evaluate("window.__notReloaded") is True
    assert "ValueError" in row.locator("td[data-col=exception]").inner_text()
    screenshot(page.page, "tasks")
    page.quiet()


def test_filter_search_open_the_failed_task_and_replay_it_as_operator(bench, page):
    failed = send(bench, "sample.fail", SEARCH_VALUE)
    other = send(bench, "sample.add", 40, 2)
    finished(bench, failed, other)
    log_in(page.page, bench["url"], bench["tokens"]["operator"])
    page.page.goto(bench["url"] + "/tasks")
    page.page.click(".states a[data-state=FAILURE]")
    page.page.wait_for_url(re.compile(r".*state=FAILURE.*"))
    states = set(page.page.locator("#runs td[data-col=state]").all_inner_texts())
    assert states == {"FAILURE"}
    page.page.fill("input[name=q]", f"args:{SEARCH_VALUE}")
    page.page.click("form.filters button[type=submit]")
    page.page.wait_for_url(re.compile(r".*q=args.*"))
    ids = page.page.locator("#runs tbody tr").evaluate_all("rows => rows.map(r => r.dataset.taskId)")
    assert ids == [failed]
    page.page.click(f'#runs a[href="/tasks/{failed}"]')
    page.page.wait_for_url(f"**/tasks/{failed}")
    events = page.page.locator("#timeline li").evaluate_all("items => items.map(i => i.dataset.event)")
    assert events == ["sent", "received", "started", "finished"]
    assert "ValueError: " + SEARCH_VALUE in page.page.locator("#traceback").inner_text()
    screenshot(page.page, "task")
    page.page.click("#replay")  # the confirm() is accepted by Watched
    page.page.wait_for_url(re.compile(r".*/tasks/(?!%s)[0-9a-f-]{36}$" % failed))
    new_id = page.page.url.rsplit("/", 1)[1]
    assert page.page.locator("#replay-of").inner_text() == failed
    rows = wait_for_runs(bench["engine"], [new_id], states={"FAILURE"})
    original = wait_for_runs(bench["engine"], [failed])[failed]
    assert rows[new_id]["replay_of"] == failed
    assert list(ast.literal_eval(rows[new_id]["args"])) == list(ast.literal_eval(original["args"])) == [SEARCH_VALUE]
    page.page.goto(bench["url"] + f"/tasks/{failed}")
    assert page.page.locator("a.replayed-as").inner_text() == new_id
    page.quiet()


def test_a_viewer_sees_no_replay_button_and_a_forged_replay_gets_403(bench, page):
    task_id = send(bench, "sample.fail", "viewer")
    finished(bench, task_id)
    log_in(page.page, bench["url"], bench["tokens"]["viewer"])
    page.page.goto(bench["url"] + f"/tasks/{task_id}")
    assert page.page.locator("#replay").count() == 0 and page.page.locator("#revoke").count() == 0
    forged = page.page.evaluate("""async (id) => {
        const csrf = document.querySelector('meta[name="csrf-token"]').content;
        const r = await fetch('/api/v1/tasks/' + id + '/replay', {method: 'POST', headers: {'X-CSRF-Token': csrf, 'Content-Type': 'application/json'}, body: '{}'});
        return r.status; }""", task_id)
    assert forged == 403
    assert not [r for r in _runs(bench) if r["replay_of"] == task_id]
    assert page.errors == ["Failed to load resource: the server responded with a status of 403 (Forbidden)"]
    assert not page.dialogs


def test_a_post_without_the_csrf_token_is_refused(bench, page):
    task_id = send(bench, "sample.fail", "csrf")
    finished(bench, task_id)
    log_in(page.page, bench["url"], bench["tokens"]["operator"])
    page.page.goto(bench["url"] + f"/tasks/{task_id}")
    statuses = page.page.evaluate("""async (id) => {
        const none = await fetch('/api/v1/tasks/' + id + '/replay', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'});
        const wrong = await fetch('/api/v1/tasks/' + id + '/replay', {method: 'POST', headers: {'X-CSRF-Token': 'forged', 'Content-Type': 'application/json'}, body: '{}'});
        return [none.status, wrong.status]; }""", task_id)
    assert statuses == [403, 403]
    assert not [r for r in _runs(bench) if r["replay_of"] == task_id]
    # The session cookie cannot be read by a script, and is SameSite=Strict.
    cookie = next(c for c in page.page.context.cookies() if c["name"] == "taskmon_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.page.evaluate("document.cookie") == ""


def test_payloads_in_args_exception_hostname_and_queue_are_text_on_every_page(bench, page):
    task_id = send(bench, "sample.fail", PAYLOAD, queue=XSS_QUEUE)
    rows = finished(bench, task_id)
    assert rows[task_id]["worker"] == XSS_HOST and rows[task_id]["queue"] == XSS_QUEUE
    log_in(page.page, bench["url"], bench["tokens"]["operator"])
    pages = ("/", "/workers", "/queues", "/dead-letters", "/alerts", "/schedule", "/tasks",
             "/tasks?q=" + quote(json.dumps("args:" + PAYLOAD)), f"/tasks/{task_id}", "/workers/" + quote(XSS_HOST))
    for path in pages:
        response = page.page.goto(bench["url"] + path)
        assert response.status == 200, path
        assert "unsafe-inline" not in response.headers["content-security-policy"]
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert page.page.locator("img[src=x]").count() == 0, path
        assert page.page.locator("script:not([src])").count() == 0, path
        body = page.page.locator("main").inner_text()
        if path.startswith("/workers"):
            assert XSS_HOST in body
        if path in ("/", "/queues"):
            assert XSS_QUEUE in body
        if path == "/":
            assert XSS_HOST in body
        if path.startswith("/tasks/"):
            assert PAYLOAD in page.page.locator("#args").inner_text()
            assert PAYLOAD in page.page.locator("#exception").inner_text()
            assert XSS_HOST in body and XSS_QUEUE in body
    # The live row of a hostile run is built as text too.
    page.page.goto(bench["url"] + "/tasks")
    page.page.wait_for_selector("#live-status:text('live')")
    live_id = send(bench, "sample.fail", PAYLOAD, queue=XSS_QUEUE)
    row = page.page.locator(f'#runs tr[data-task-id="{live_id}"]')
    row.locator("td[data-col=state]:text('FAILURE')").wait_for(timeout=20_000)
    assert XSS_QUEUE == row.locator("td[data-col=queue]").inner_text()
    assert page.page.locator("img[src=x]").count() == 0
    time.sleep(0.5)  # an onerror handler would fire as soon as the image failed to load
    page.quiet()


def _runs(bench) -> list[dict]:
    from sqlalchemy import select

    from storage.schema import task_runs

    with bench["engine"].connect() as conn:
        return [dict(r) for r in conn.execute(select(task_runs.c.task_id, task_runs.c.replay_of)).mappings()]


def test_every_page_fits_a_phone_width_in_the_dark_theme_too(bench):
    context = bench["browser"].new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = Watched(context.new_page())
    try:
        log_in(page.page, bench["url"], bench["tokens"]["operator"])
        links = page.page.locator("header nav a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
        assert links == ["/", "/tasks", "/workers", "/queues", "/dead-letters", "/alerts", "/schedule"]
        page.page.click("#theme-toggle")
        theme = page.page.evaluate("document.documentElement.dataset.theme")
        for path in links:
            page.page.goto(bench["url"] + path)
            assert page.page.evaluate("document.documentElement.dataset.theme") == theme  # remembered
            width = page.page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{path} is {width}px wide on a 390px phone"
        background = page.page.evaluate("getComputedStyle(document.body).backgroundColor")
        page.page.click("#theme-toggle")
        assert page.page.evaluate("getComputedStyle(document.body).backgroundColor") != background
        page.quiet()
    finally:
        context.close()


def test_dead_letters_preview_a_bulk_replay_before_sending_it(bench, page):
    from storage.deadletters import list_dead_letters

    task_id = send(bench, "sample.fail", "dead letter")
    finished(bench, task_id)
    deadline = time.monotonic() + 40
    while True:  # the daemon's detector sweep files failures as dead letters
        with bench["engine"].connect() as conn:
            if any(l["task_id"] == task_id for l in list_dead_letters(conn, name="sample.fail")):
                break
        assert time.monotonic() < deadline, f"{task_id} did not become a dead letter in 40s"
        time.sleep(0.5)
    log_in(page.page, bench["url"], bench["tokens"]["operator"])
    page.page.goto(bench["url"] + "/dead-letters?name=sample.fail")
    before = len(_runs(bench))
    page.page.click("#preview-replay")
    preview = page.page.locator("#preview")
    preview.wait_for(state="visible")
    answer = json.loads(preview.inner_text())
    assert answer["dry_run"] is True and task_id in {r["task_id"] for r in answer["replayed"]}
    assert all(r["new_task_id"] is None for r in answer["replayed"])
    assert len(_runs(bench)) == before  # nothing was sent
    page.quiet()


def test_a_worker_answers_live_and_only_an_admin_gets_its_controls(bench, page):
    log_in(page.page, bench["url"], bench["tokens"]["operator"])
    page.page.goto(bench["url"] + "/workers")
    page.page.click('#workers a:text("w1@taskmon-demo")')
    page.page.wait_for_url("**/workers/w1%40taskmon-demo")
    assert "stats" in page.page.locator("#live").inner_text()
    assert page.page.locator("#controls").count() == 0  # operators do not control workers
    page.page.context.clear_cookies()
    log_in(page.page, bench["url"], bench["tokens"]["admin"])
    page.page.goto(bench["url"] + "/workers/w1%40taskmon-demo")
    page.page.fill('#controls form[action$="/pool/grow"] input[name=n]', "1")
    page.page.click('#controls form[action$="/pool/grow"] button')
    reply = page.page.locator("#control-reply")
    reply.wait_for(state="visible")
    answer = json.loads(reply.inner_text())
    assert answer["worker"] == "w1@taskmon-demo" and answer["command"] == "pool_grow", answer
    page.page.click('#controls form[action$="/pool/shrink"] button')
    # (a locator, not wait_for_function: the page's CSP refuses the string eval that one uses)
    page.page.locator("#control-reply", has_text="pool_shrink").wait_for()
    page.quiet()


BACKLOG = "backlog"  # a queue no worker consumes: its messages wait


def test_the_queues_page_charts_the_depths_the_leader_daemon_sampled(bench, page):
    from sqlalchemy import func, select

    from storage.schema import queue_depths

    ids = [send(bench, "sample.add", i, i, queue=BACKLOG) for i in range(3)]
    hostile = send(bench, "sample.add", 1, 1, queue=XSS_QUEUE)
    wait_for_runs(bench["engine"], ids)  # their task-sent events make "backlog" a queue of the last day
    finished(bench, hostile)
    deadline = time.monotonic() + 30
    while True:
        with bench["engine"].connect() as conn:
            peak = conn.execute(select(func.max(queue_depths.c.messages)).where(queue_depths.c.queue == BACKLOG)).scalar()
            hostile_sampled = conn.execute(select(func.count()).where(queue_depths.c.queue == XSS_QUEUE)).scalar()
        if peak == 3 and hostile_sampled:
            break
        assert time.monotonic() < deadline, f"no sample of {BACKLOG} with 3 messages in 30 s (peak {peak})"
        time.sleep(0.5)
    log_in(page.page, bench["url"], bench["tokens"]["viewer"])
    page.page.goto(bench["url"] + "/queues?window=1h")
    panel = page.page.locator(f'#depth-history section[data-queue="{BACKLOG}"]')
    assert panel.locator("svg.chart").count() == 1
    assert "3" in panel.locator("svg.chart text").all_text_contents()  # the y axis tops at the peak sampled
    queues = page.page.locator("#depth-history section").evaluate_all("s => s.map(e => e.dataset.queue)")
    assert XSS_QUEUE in queues and "celery" in queues  # sampled too, and shown as text
    assert page.page.locator("img[src=x]").count() == 0
    screenshot(page.page, "queues")
    page.quiet()


def test_an_operator_edits_a_schedule_entry_in_the_form_and_bad_input_changes_nothing(bench, page):
    from datetime import datetime, timezone

    from storage.schedules import add_schedule, get_schedule
    from tasks.cron import definition

    name = "nightly<img src=x onerror=alert(9)>"
    with bench["engine"].begin() as conn:
        add_schedule(conn, definition(name, "reports.daily_report", cron="0 2 * * *", args=["eu"], queue="reports"),
                     datetime.now(timezone.utc))
    log_in(page.page, bench["url"], bench["tokens"]["operator"])
    page.page.goto(bench["url"] + "/schedule")
    page.page.click(f'a[data-edit="{name}"]')
    page.page.wait_for_url("**/edit")
    assert page.page.locator("h1 .mono").inner_text() == name  # the name is text, not markup
    assert page.page.locator("img[src=x]").count() == 0
    assert page.page.locator("#cron").input_value() == "0 2 * * *" and page.page.locator("#every").is_disabled()
    # Bad JSON is refused in the page: nothing is sent.
    page.page.fill("#args", "[1, 2")
    page.page.click("#save")
    page.page.locator("#flash", has_text="args: not valid JSON").wait_for()
    # A crontab the server cannot read is its one-line 400, shown in the page.
    page.page.fill("#args", "[1, 2]")
    page.page.fill("#cron", "61 * * * *")
    page.page.click("#save")
    page.page.locator("#flash", has_text="crontab").wait_for()
    with bench["engine"].connect() as conn:
        assert get_schedule(conn, name)["args"] == ["eu"]  # unchanged so far
    page.page.check('input[name=_kind][value=every]')
    assert page.page.locator("#cron").is_disabled() and not page.page.locator("#every").is_disabled()
    page.page.fill("#every", "90")
    page.page.fill("#kwargs", '{"force": true}')
    page.page.select_option("#queue", "")
    page.page.uncheck("#enabled")
    screenshot(page.page, "schedule-edit")
    page.page.click("#save")
    page.page.wait_for_url(bench["url"] + "/schedule")
    with bench["engine"].connect() as conn:
        row = get_schedule(conn, name)
    assert (row["interval_seconds"], row["minute"], row["args"], row["kwargs"], row["queue"], row["enabled"]) == (
        90, None, [1, 2], {"force": True}, None, False)
    assert "every 90s" in page.page.locator("#schedule").inner_text()
    assert page.errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
    assert not page.dialogs


def test_a_retried_task_shows_each_attempt_and_the_latest_attempt_s_times(bench, page):
    task_id = send(bench, "sample.flaky", 2)
    rows = wait_for_runs(bench["engine"], [task_id], states={"SUCCESS"})
    assert rows[task_id]["retries"] == 2
    log_in(page.page, bench["url"], bench["tokens"]["viewer"])
    page.page.goto(bench["url"] + f"/tasks/{task_id}")
    attempts = page.page.locator("#attempts li")
    assert attempts.evaluate_all("items => items.map(i => [i.dataset.attempt, i.dataset.outcome])") == [
        ["1", "RETRY"], ["2", "RETRY"], ["3", "SUCCESS"]]
    assert "not stored" in attempts.nth(0).inner_text() and "first seen" in attempts.nth(0).inner_text()
    last = attempts.nth(2).locator(".step").evaluate_all("steps => steps.map(s => s.dataset.event)")
    assert last == [s for s in ("sent", "received", "started", "finished")
                    if rows[task_id][f"{s}_at"] is not None] and "finished" in last
    assert "attempt 3, the latest" in page.page.locator("section.panel h2").first.inner_text()
    page.quiet()
