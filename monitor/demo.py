"""`taskmon demo`: the whole product on a laptop with nothing running.

An embedded redis-server, a SQLite file, taskmon's `tasks` worker with beat, the daemon, a
local SMTP sink and sample traffic (succeeding, retrying, failing and slow tasks). Every
process it starts is stopped again, on Ctrl-C too.
"""
from __future__ import annotations

import logging
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from monitor.redis_server import RedisServer, free_port
from tasks.settings import Settings

log = logging.getLogger(__name__)

QUEUES = "default,high_priority,low_priority,finance,reports,email,maintenance,alerts"


@dataclass(frozen=True)
class DemoPlan:
    duration: float = 30.0
    rate: float = 8.0  # tasks per second
    workdir: Path = Path(".")
    program: str = "taskmon"  # how the user types taskmon (see typed_program)


def typed_program(argv0: str | None = None, which: Callable[[str], str | None] = shutil.which) -> str:
    """How the user can run this taskmon again: `taskmon` when PATH finds this very program, else its path.

    After the README's install the program is .venv/bin/taskmon, and PATH may find none, or another one.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    if Path(argv0).stem != "taskmon":  # python -m cli
        return f"{shlex.quote(sys.executable)} -m cli"
    found = which("taskmon")
    if found is not None and os.path.realpath(found) == os.path.realpath(argv0):
        return "taskmon"
    return shlex.quote(argv0)


class SmtpSink:
    """A local SMTP server that keeps what it receives (the demo's stand-in for a mail relay)."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[tuple[str, str]] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope):
        from email import message_from_bytes

        msg = message_from_bytes(envelope.content)
        self.messages.append((", ".join(envelope.rcpt_tos), str(msg.get("Subject", ""))))
        return "250 OK"

    def __enter__(self) -> "SmtpSink":
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


class Processes:
    """Subprocesses in their own process groups, all stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], env: dict, log_path: Path) -> subprocess.Popen:
        proc = subprocess.Popen(args, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self, timeout: float = 15.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def send_traffic(app, plan: DemoPlan, stop: threading.Event, sent: dict[str, int]) -> None:
    """Mixed traffic: mostly quick successes, some retries, failures, slow ones and a secret."""
    rng = random.Random(1)
    kinds: list[tuple[float, str, Callable[[], tuple]]] = [
        (0.55, "demo.add", lambda: ((rng.randint(1, 99), rng.randint(1, 99)), {})),
        (0.15, "demo.flaky", lambda: ((), {"fail_times": rng.randint(1, 2)})),
        (0.12, "demo.fail", lambda: ((), {"reason": rng.choice(["card declined", "upstream timeout", "bad input"])})),
        (0.10, "demo.slow", lambda: ((rng.uniform(1, 4),), {})),
        (0.08, "demo.login", lambda: (("alice",), {"password": "hunter2", "api_key": "sk-demo-123"})),
    ]
    interval = 1.0 / plan.rate
    deadline = time.monotonic() + plan.duration
    while not stop.is_set() and time.monotonic() < deadline:
        roll, acc = rng.random(), 0.0
        for weight, name, make in kinds:
            acc += weight
            if roll <= acc:
                args, kwargs = make()
                app.send_task(name, args, kwargs)
                sent[name] = sent.get(name, 0) + 1
                break
        stop.wait(interval)


def demo_token(engine) -> str:
    """A new admin token for this demo run (each run its own name: the history file may be an old one)."""
    from datetime import datetime, timezone

    from storage.tokens import create_token

    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        return create_token(conn, now, f"demo-admin-{now:%Y%m%d-%H%M%S-%f}", "admin")


def api_port(preferred: int = 5555) -> int:
    """Flower's port when it is free, else any free one."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> bool:
    """Whether the server at ``url`` answered before ``timeout`` (False: it exited or stayed silent)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return True
        except urllib.error.HTTPError:  # an answer (/healthz is 503 until the daemon's first heartbeat)
            return True
        except OSError:
            time.sleep(0.2)
    return False


def summarize(engine, tz, smtp: "SmtpSink", echo: Callable[[str], None]) -> None:
    from monitor.commands.history_render import history_table
    from storage.history import list_runs, state_counts

    with engine.connect() as conn:
        runs = list_runs(conn, limit=10)
        counts = state_counts(conn)
    echo("")
    echo(history_table(runs, tz) if runs else "no task runs were recorded")
    echo("")
    echo("task runs by state: " + ", ".join(f"{state} {n}" for state, n in counts.items()))
    echo(f"e-mails received by the SMTP sink: {len(smtp.messages)}")
    for to, subject in smtp.messages[:5]:
        echo(f"  to {to}: {subject}")


def run_demo(plan: DemoPlan, echo: Callable[[str], None], timezone: str = "UTC") -> int:
    from monitor.daemon import Daemon
    from storage.db import ensure_schema, make_engine

    workdir = plan.workdir.resolve()
    logs = workdir / "taskmon-demo-logs"
    logs.mkdir(parents=True, exist_ok=True)
    db_path = workdir / "taskmon.db"
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    processes = Processes()
    daemon = None
    try:
        with RedisServer() as redis_server, SmtpSink() as smtp:
            settings = Settings(broker_url=redis_server.url, database_url=f"sqlite:///{db_path}",
                                smtp_host="127.0.0.1", smtp_port=smtp.port,
                                alert_recipients=("ops@example.com",), timezone=timezone,
                                event_sources=("pubsub", "stream"), enable_events=False)
            echo(f"redis-server on {redis_server.url}, history in {db_path}, SMTP sink on 127.0.0.1:{smtp.port}")
            engine = make_engine(settings.database_url)
            ensure_schema(engine)
            env = dict(os.environ, TASKMON_BROKER_URL=settings.broker_url, TASKMON_DATABASE_URL=settings.database_url,
                       TASKMON_SMTP_HOST="127.0.0.1", TASKMON_SMTP_PORT=str(smtp.port),
                       TASKMON_ALERT_RECIPIENTS="ops@example.com", TASKMON_TIMEZONE=settings.timezone)
            env.pop("TASKMON_CONFIG", None)
            daemon = Daemon(settings, engine)
            daemon.start()
            processes.start([sys.executable, "-m", "celery", "-A", "tasks", "worker", "-B", "-E", "-Q", QUEUES,
                             "-c", "2", "-l", "info", "-n", "demo@%h",
                             "--schedule", str(logs / "celerybeat-schedule")], env, logs / "worker.log")
            port = api_port()
            token = demo_token(engine)
            server = processes.start([sys.executable, "-m", "cli", "serve", "--port", str(port),
                                      "--db", settings.database_url], env,
                                     logs / "serve.log")
            address = f"http://127.0.0.1:{port}"
            if wait_for_http(f"{address}/healthz", server):
                echo(f"API on {address}/api/v1 (docs {address}/api/v1/docs); demo admin token: {token}")
                echo(f"  try: curl -H 'Authorization: Bearer {token}' {address}/api/v1/tasks")
            else:
                echo(f"the API server did not start: see {logs / 'serve.log'}")
            echo(f"worker + beat started (logs in {logs}); sending traffic for {plan.duration:.0f}s, Ctrl-C to stop early")
            from tasks.application import make_app

            app = make_app(settings, set_as_current=False)
            sent: dict[str, int] = {}
            send_traffic(app, plan, stop, sent)
            echo(f"sent {sum(sent.values())} tasks: " + ", ".join(f"{n} {k}" for k, n in sorted(sent.items())))
            if not stop.is_set():
                echo("waiting for running tasks to finish...")
                stop.wait(6)
            processes.stop_all()
            daemon.shutdown()
            daemon = None
            app.close()
            summarize(engine, settings.tz, smtp, echo)
            echo("")
            taskmon = plan.program
            echo(f"The history stays in {db_path}: try `{taskmon} history --limit 10`, `{taskmon} stats`, "
                 f"`{taskmon} show TASK_ID` in this directory.")
            return 130 if stop.is_set() else 0
    finally:
        signal.signal(signal.SIGINT, previous)
        processes.stop_all()
        if daemon is not None:
            daemon.shutdown()

