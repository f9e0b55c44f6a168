"""The dashboard's test bench: `taskmon serve` and `taskmon run` as real processes, and headless Chromium.

Chromium is Debian's (`apt-get install chromium chromium-driver`), driven by Playwright; without it
the browser tests skip with the reason on a laptop and fail under CI=true.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from monitor.redis_server import free_port
from tests.services import IN_CI, REPO, Subprocess, unique

SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_path() -> str:
    """Debian's chromium binary (TASKMON_TEST_CHROMIUM overrides); skip or, under CI=true, fail without it."""
    candidates = [os.environ.get("TASKMON_TEST_CHROMIUM", ""), *CHROMIUM_PATHS, shutil.which("chromium") or ""]
    found = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    problem = None
    if found is None:
        problem = "no chromium found (apt-get install chromium chromium-driver, or set TASKMON_TEST_CHROMIUM)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            problem = "playwright is not installed (pip install -e '.[dev]')"
    if problem:
        if IN_CI:
            pytest.fail(f"CI=true and {problem}", pytrace=False)
        pytest.skip(problem)
    return found


def taskmon(*args: str, db_url: str) -> str:
    """Run a taskmon command to completion; its stdout (a failure shows its stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TASKMON_DATABASE_URL=db_url)
    done = subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"taskmon {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


class ServeProcess(Subprocess):
    """`taskmon serve` on a free port of 127.0.0.1, logging to a file."""

    def __init__(self, db_url: str, broker_url: str, *args: str, logdir: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = logdir / f"{unique('serve')}.log"
        cmd = [sys.executable, "-m", "cli", "-v", "serve", "--port", str(self.port), "--db", db_url,
               "--broker", broker_url, *args]
        # One server process unless a test asks for more: a second one doubles every server's start.
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "TASKMON_HTTP_WORKERS": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> "ServeProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"taskmon serve exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "/login", timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"taskmon serve did not answer on {self.url} in {timeout}s:\n{self.log.read_text()[-3000:]}")


class Watched:
    """A browser page whose dialogs and console errors are recorded: an XSS payload that runs shows here."""

    def __init__(self, page):
        self.page = page
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._dialog)
        page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.confirm = True  # what a confirm() the dashboard itself asks is answered

    def _dialog(self, dialog) -> None:
        if dialog.type == "confirm":
            dialog.accept() if self.confirm else dialog.dismiss()
            return
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def quiet(self) -> None:
        """Nothing ran that should not have: no alert/prompt, no console error (CSP violations are errors)."""
        assert not self.dialogs, f"dialogs opened: {self.dialogs}"
        assert not self.errors, f"console errors: {self.errors}"


def log_in(page, base_url: str, token: str) -> None:
    page.goto(base_url + "/login")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_url(base_url + "/")


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
