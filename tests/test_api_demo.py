"""`taskmon demo` also serves the API and prints its address and an admin token that works."""
import os
import re
import signal
import time

import httpx

from tests.test_demo import children_alive, demo


def test_demo_prints_the_api_address_and_an_admin_token_that_works(tmp_path):
    proc = demo(tmp_path, "--duration", "60")
    lines, found = [], None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and found is None:
        line = proc.stdout.readline().decode()
        if not line:
            break
        lines.append(line)
        found = re.search(r"API on (http://127\.0\.0\.1:\d+)/api/v1 .*demo admin token: (tm_\S+)", line)
    assert found, "".join(lines)
    address, token = found.groups()
    try:
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.get(f"{address}/api/v1/tokens", headers=headers, timeout=10).status_code == 200
        assert httpx.get(f"{address}/api/v1/tasks", timeout=10).status_code == 401
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        output = "".join(lines) + proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, output
    time.sleep(0.5)
    assert children_alive(tmp_path, output) == []
