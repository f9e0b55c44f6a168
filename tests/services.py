"""Real services for the tests: where to find them, and skip-or-fail when they are missing."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
POSTGRES_URL = os.environ.get("TASKMON_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
AMQP_URL = os.environ.get("TASKMON_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def missing(service: str, reason: str):
    """Skip on a laptop without the service; under CI=true a missing service fails the run."""
    message = f"{service} not reachable ({reason}); set TASKMON_TEST_{service.upper()}_URL"
    if IN_CI:
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def need_program(name: str) -> str:
    """The path of a program a test needs; skip without it on a laptop, fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if IN_CI:
            pytest.fail(f"CI=true and {message}", pytrace=False)
        pytest.skip(message)
    return path


def wait_until(condition, what: str, timeout: float = 30.0, interval: float = 0.1):
    """Poll ``condition`` until it returns something true and return that; fail saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(interval)


def unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


class Subprocess:
    """A celery command running in its own process group, logging to a file the test can read."""

    log: Path
    proc: subprocess.Popen

    def wait_for(self, marker: bytes, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.log.stem} exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            if marker in self.log.read_bytes():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.log.stem}: no {marker!r} in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no worker-offline event is sent."""
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def discard(self) -> None:
        """End a process whose test is over: SIGKILL its group at once. A celery worker's own shutdown,
        warm or cold, takes seconds even when idle, and nothing a finished test ran needs to end well."""
        self.kill()

    def stop(self, timeout: float = 20.0) -> None:
        import signal

        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()


class Worker(Subprocess):
    """A real `celery worker` subprocess (events on unless ``events=False``)."""

    def __init__(self, app: str, broker_url: str, *, queues: str | None = None, concurrency: int = 2,
                 pool: str = "prefork", env: dict | None = None, extra: list[str] | None = None, logdir: Path,
                 events: bool = True, hostname: str | None = None):
        self.hostname = hostname or f"{unique('w')}@taskmon-test"
        self.broker_url = broker_url
        self.log = logdir / f"{unique(self.hostname.split('@')[0])}.log"
        args = [sys.executable, "-m", "celery", "-A", app, "worker", "-l", "info",
                "-c", str(concurrency), "-P", pool, "-n", self.hostname, "--without-gossip", "--without-mingle"]
        if events:
            args.append("-E")
        if queues:
            args += ["-Q", queues]
        args += extra or []
        full_env = dict(os.environ, SAMPLE_BROKER_URL=broker_url, PYTHONPATH=str(REPO), **(env or {}))
        self.proc = subprocess.Popen(args, cwd=REPO, env=full_env, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> "Worker":
        self.wait_for(b" ready.", timeout)
        return self

class Beat(Subprocess):
    """A real `celery beat` subprocess, started in ``logdir`` so that nothing lands in the repository."""

    def __init__(self, app: str, *, env: dict | None = None, extra: list[str] | None = None, logdir: Path):
        self.log = logdir / f"{unique('beat')}.log"
        args = [sys.executable, "-m", "celery", "-A", app, "beat", "-l", "info", *(extra or [])]
        full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        self.proc = subprocess.Popen(args, cwd=logdir, env=full_env, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)


def rabbitmqctl(*args: str) -> bool:
    ctl = shutil.which("rabbitmqctl")
    if not ctl:
        return False
    return subprocess.run([ctl, *args], capture_output=True, timeout=60).returncode == 0


class DaemonProcess(Subprocess):
    """`taskmon run` as a subprocess, so that a test can SIGTERM or SIGKILL it."""

    def __init__(self, broker_url: str, db_url: str, *args: str, logdir: Path, env: dict | None = None):
        self.log = logdir / f"{unique('daemon')}.log"
        cmd = [sys.executable, "-m", "cli", "-v", "run", "--broker", broker_url, "--db", db_url,
               "--no-enable-events", *args]
        full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        self.wait_for(text.encode(), timeout)

    def terminate(self, timeout: float = 15.0) -> int:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


class TasksWorkers:
    """Two `celery -A tasks worker`s, pool restarts enabled on the first only."""

    def __init__(self, redis_url: str, env: dict):
        import tempfile

        self.dir = tempfile.TemporaryDirectory(prefix="tmworkers")
        logdir = Path(self.dir.name)
        self.workers = [Worker("tasks", redis_url, queues="maintenance", concurrency=2, logdir=logdir,
                               env={**env, "TASKMON_WORKER_POOL_RESTARTS": "true"}),
                        Worker("tasks", redis_url, queues="maintenance", concurrency=1, logdir=logdir, env=env)]

    def __enter__(self):
        try:
            return [w.wait_ready(timeout=60) for w in self.workers]
        except BaseException:
            self.__exit__(RuntimeError, None, None)  # __exit__ is not called when __enter__ fails
            raise

    def __exit__(self, *exc):
        for worker in self.workers:
            worker.stop()
            if exc[0] is not None:
                print(f"--- {worker.log.name}", *worker.log.read_text(errors="replace").splitlines()[-40:], sep="\n")
        self.dir.cleanup()
