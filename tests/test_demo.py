"""`taskmon demo` runs everything, leaves the history behind, and cleans up its processes (Ctrl-C too)."""
import os
import signal
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, select

from cli import cli
from monitor.demo import typed_program
from storage.db import make_engine
from storage.schema import task_runs
from tests.services import REPO, wait_until


# The program the README's install command leaves: .venv/bin/taskmon, not on PATH.
SCRIPT = Path(sys.executable).with_name("taskmon")


def demo(tmp_path, *args, program=(sys.executable, "-m", "cli")):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKMON_")}
    env["PYTHONPATH"] = str(REPO)
    path = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(d for d in path if not (Path(d) / "taskmon").exists())
    return subprocess.Popen([*program, "demo", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def children_alive(tmp_path, output: str) -> list[str]:
    """Processes still running that the demo started: its worker (log dir in argv) and its redis-server."""
    import re

    port = re.search(r"redis-server on redis://127.0.0.1:(\d+)/", output).group(1)
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if str(tmp_path) in line or f"127.0.0.1:{port}" in line]


def test_demo_runs_traffic_and_leaves_the_history(tmp_path):
    proc = demo(tmp_path, "--duration", "6", "--rate", "10", program=(str(SCRIPT),))
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, output
    assert f"try `{SCRIPT} history --limit 10`, `{SCRIPT} stats`" in output
    assert "task runs by state:" in output and "SUCCESS" in output and "FAILURE" in output
    engine = make_engine(f"sqlite:///{tmp_path / 'taskmon.db'}")
    with engine.connect() as conn:
        names = set(conn.execute(select(task_runs.c.name)).scalars())
        login = conn.execute(select(task_runs.c.kwargs).where(task_runs.c.name == "demo.login")).scalars().all()
        total = conn.execute(select(func.count()).select_from(task_runs)).scalar()
    assert {"demo.add", "demo.fail", "demo.flaky"} <= names and total >= 40
    assert login and all("hunter2" not in k and "sk-demo" not in k for k in login)
    assert children_alive(tmp_path, output) == []
    history = CliRunner().invoke(cli, ["history", "--limit", "10", "--db", f"sqlite:///{tmp_path / 'taskmon.db'}"])
    assert history.exit_code == 0 and "demo." in history.output


def test_ctrl_c_stops_the_demo_and_every_process_it_started(tmp_path):
    proc = demo(tmp_path, "--duration", "120")
    wait_until(lambda: stored_runs(tmp_path / "taskmon.db"), "the demo's first task run in its history", timeout=60,
               interval=0.2)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, output
    assert "task runs by state:" in output
    wait_until(lambda: children_alive(tmp_path, output) == [], "every process the demo started to be gone",
               timeout=10)


def stored_runs(path: Path) -> int:
    """How many task runs the history at ``path`` holds; 0 while it or its table is not there yet."""
    import sqlite3

    if not path.exists():
        return 0
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM task_runs").fetchone()[0]
    except sqlite3.OperationalError:  # the daemon has not created the schema yet
        return 0
    finally:
        conn.close()


def test_the_hint_names_taskmon_as_the_user_can_type_it(tmp_path):
    script = tmp_path / "venv" / "bin" / "taskmon"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    other = tmp_path / "elsewhere" / "taskmon"
    assert typed_program(str(script), which=lambda name: str(script)) == "taskmon"
    assert typed_program(str(script), which=lambda name: None) == str(script)
    assert typed_program(str(script), which=lambda name: str(other)) == str(script)
    assert typed_program(".venv/bin/taskmon", which=lambda name: None) == ".venv/bin/taskmon"
    assert typed_program(str(REPO / "cli.py"), which=lambda name: str(script)) == f"{sys.executable} -m cli"
