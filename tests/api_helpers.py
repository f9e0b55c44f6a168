"""`taskmon serve` as a real subprocess on a free port, tokens made by `taskmon token create`, an HTTP client."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from monitor.redis_server import free_port
from tests.services import REPO, Subprocess, unique


def taskmon(*args: str, db_url: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a taskmon command to completion (exit code not checked)."""
    full_env = dict(os.environ, PYTHONPATH=str(REPO), TASKMON_DATABASE_URL=db_url, **(env or {}))
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=full_env, capture_output=True,
                          text=True, timeout=60)


def create_token(db_url: str, name: str, role: str) -> str:
    done = taskmon("token", "create", "--name", name, "--role", role, db_url=db_url)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


class ApiServer(Subprocess):
    """`taskmon serve` on a free port of 127.0.0.1; ``client(token)`` talks to it."""

    def __init__(self, db_url: str, *args: str, broker_url: str | None = None, logdir: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logdir / f"{unique('serve')}.log"
        cmd = [sys.executable, "-m", "cli", "-v", "serve", "--port", str(self.port), "--db", db_url, *args]
        if broker_url:
            cmd += ["--broker", broker_url]
        # One server process unless a test asks for more: a second one doubles every server's start.
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "TASKMON_HTTP_WORKERS": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> "ApiServer":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"taskmon serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                httpx.get(self.url + "/healthz", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"taskmon serve did not answer on {self.url} in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def client(self, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")
