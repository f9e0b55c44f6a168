"""The dashboard's test bench: headless Chromium on pages of a real `taskmon serve` (tests.api_helpers.ApiServer).

Chromium is Debian's (`apt-get install chromium chromium-driver`), driven by Playwright; without it
the browser tests skip with the reason on a laptop and fail under CI=true.
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.api_helpers import taskmon as run_taskmon
from tests.services import IN_CI, REPO

# The README's screenshots are refreshed only when asked (TASKMON_TEST_SCREENSHOTS=docs/screenshots);
# otherwise they go to a directory of the run's own, so a test run leaves the checkout as it was.
SCREENSHOTS = os.environ.get("TASKMON_TEST_SCREENSHOTS")
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
    """Run a taskmon command that must succeed; its stdout (a failure shows its stderr)."""
    done = run_taskmon(*args, db_url=db_url)
    assert done.returncode == 0, f"taskmon {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


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


@functools.cache
def screenshots_dir() -> Path:
    if not SCREENSHOTS:
        return Path(tempfile.mkdtemp(prefix="taskmon-screenshots-"))
    path = Path(SCREENSHOTS) if Path(SCREENSHOTS).is_absolute() else REPO / SCREENSHOTS
    path.mkdir(parents=True, exist_ok=True)
    return path


def screenshot(page, name: str) -> None:
    page.screenshot(path=str(screenshots_dir() / f"{name}.png"), full_page=True)
