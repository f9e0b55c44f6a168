"""Every broker command: --json, a help text with an example, and one bounded line for a broker that is down or hung."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from cli import cli
from monitor.broker.calls import GRACE
from monitor.commands.broker import COMMANDS as BROKER_COMMANDS, worker_group
from monitor.commands.tasks_app import schedule_group
from monitor.redis_server import free_port
from tests.services import REPO

# Each `taskmon worker ACTION` with the arguments it needs (all of them: see the test below).
WORKER_ARGS = {
    "pool-grow": ["2"], "pool-shrink": ["1"], "autoscale": ["4", "1"], "add-consumer": ["extra_q"],
    "cancel-consumer": ["extra_q"], "rate-limit": ["sample.add", "5/m"], "time-limit": ["sample.add", "--soft", "1"],
    "shutdown": [], "pool-restart": [],
}
SCHEDULE_COMMANDS = {"run": ["cleanup-expired-results"], "status": []}

COMMANDS = [
    ["send", "sample.add", "--args", "[1, 2]"], ["result", "some-id"],
    *(["inspect", what] for what in ("active", "stats")),
    ["purge", "q", "--yes", "--force"], ["purge", "--all", "--yes"], ["ping"],
    *(["worker", action, *args, "--yes"] for action, args in WORKER_ARGS.items()),
    *(["schedule", name, *args] for name, args in SCHEDULE_COMMANDS.items()),
]
TIMEOUT = 1.0


def command_path(command: list[str]) -> list[str]:
    return command[:2] if command[0] in ("worker", "schedule") else command[:1]


def test_the_walk_covers_every_broker_command():
    """A command added to `taskmon worker` (or the broker commands) without a place here fails this."""
    assert set(WORKER_ARGS) == set(worker_group.commands)
    assert {c.name for c in BROKER_COMMANDS} | {"schedule"} == {c[0] for c in COMMANDS}
    assert {"run", "status"} <= set(schedule_group.commands)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(command_path(c)) + " " + " ".join(c[2:3]))
def test_every_command_has_json_and_help_with_an_example(command):
    path = command_path(command)
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "--json" in result.output and "--timeout" in result.output
    example = result.output.split("Example:", 1)
    assert len(example) == 2 and "taskmon " + " ".join(path) in example[1], result.output


@pytest.fixture
def hung_broker():
    """A TCP server that accepts connections and never answers: the worst broker."""
    server = socket.socket()
    server.bind(("127.0.0.1", free_port()))
    server.listen(64)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"redis://:hunter2@127.0.0.1:{server.getsockname()[1]}/0"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


# What the commands import before they reach the broker (SQLAlchemy and the history store, celery, kombu).
IMPORTS = ("cli", "monitor.broker.control", "monitor.broker.sending", "storage.audit", "storage.schedules", "storage.db", "tasks.application",
           "tasks.client", "celery", "kombu.transport.redis", "kombu.transport.pyamqp", "redis", "amqp")


@pytest.fixture(scope="module")
def startup_seconds() -> float:
    """What starting the interpreter and importing what a command imports costs here, without any broker."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import " + ", ".join(IMPORTS)], capture_output=True, cwd=REPO, check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    return time.monotonic() - started


def urls(kind: str, hung: str) -> str:
    if kind == "hung":
        return hung
    if kind == "closed-amqp":
        return f"amqp://guest:hunter2@127.0.0.1:{free_port()}//"
    return f"redis://:hunter2@127.0.0.1:{free_port()}/0"


# beat's tick lives on a Redis broker only: on amqp:// `schedule status` reads no broker, so it is not walked there
DOWN = [pytest.param(command, kind, id=f"{' '.join(command_path(command))} {' '.join(command[2:3])} {kind}".strip())
        for kind in ("closed", "closed-amqp", "hung") for command in COMMANDS
        if not (kind == "closed-amqp" and command[:2] == ["schedule", "status"])]


@pytest.mark.slow
@pytest.mark.parametrize("command,kind", DOWN)
def test_a_broker_down_or_hung_is_one_line_and_bounded_by_timeout(command, kind, sqlite_store, hung_broker,
                                                                 startup_seconds):
    url = urls(kind, hung_broker)
    # the result backend is down too: `result` and `send --wait` read it
    env = {**os.environ, "PYTHONPATH": str(REPO), "TASKMON_RESULT_BACKEND": f"redis://:hunter2@127.0.0.1:{free_port()}/0"
           if kind == "closed-amqp" else url}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cli", *command, "--timeout", str(TIMEOUT), "--broker", url,
                           "--db", sqlite_store], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    took = time.monotonic() - started
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 1, output
    assert len(output.splitlines()) == 1, output
    assert "Traceback" not in output and "hunter2" not in output, output
    assert "cannot reach the broker" in output or "cannot reach the result backend" in output, output
    # --timeout, the grace a connect may take past it, what starting and importing costs here, and 2 s to spare
    bound = startup_seconds + TIMEOUT + GRACE + 2.0
    assert took < bound, f"{' '.join(command)} took {took:.1f}s against a {kind} broker (bound {bound:.1f}s)"
