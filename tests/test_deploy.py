"""deploy/: the supervisor config run under a real supervisord, the systemd units verified, compose checked.

The shipped files name /opt/taskmon/venv, /etc/taskmon/taskmon.toml, /var/lib/taskmon and
/var/log/taskmon; the tests fill in this checkout's virtualenv and directories of their own.
"""
from __future__ import annotations

import configparser
import getpass
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tasks.settings import load_settings
from tests.services import IN_CI, REPO, need_program

DEPLOY = REPO / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
VENV = Path(sys.prefix)


def fill_paths(text: str, *, config: Path, state: Path, logs: Path) -> str:
    return (text.replace("/opt/taskmon/venv", str(VENV)).replace("/etc/taskmon/taskmon.toml", str(config))
            .replace("/var/lib/taskmon", str(state)).replace("/var/log/taskmon", str(logs)))


def test_the_example_config_loads_with_every_key_a_setting():
    loaded = load_settings(config_path=DEPLOY / "taskmon.toml", environ={})
    assert loaded.origins.get("broker_url") == "file" and loaded.origins.get("stop_timeout") == "file"
    assert dict(loaded.settings.timeouts) == {"reports.*": 3600.0}


def test_the_compose_config_names_the_compose_services():
    settings = load_settings(config_path=DEPLOY / "compose.toml", environ={}).settings
    assert settings.broker_url.startswith("redis://redis:") and "@postgres/" in settings.database_url


def stop_waits() -> dict[str, float]:
    """Every stop timeout the shipped files give the daemon, by where it is set."""
    import yaml

    units = configparser.RawConfigParser(strict=False)
    units.read(DEPLOY / "systemd" / "taskmon-daemon.service")
    sv = configparser.RawConfigParser()
    sv.read(DEPLOY / "supervisor" / "taskmon.conf")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    grace = compose["services"]["daemon"]["stop_grace_period"]
    assert grace.endswith("s"), grace
    return {"TimeoutStopSec": float(units["Service"]["TimeoutStopSec"]),
            "stopwaitsecs": float(sv["program:taskmon-daemon"]["stopwaitsecs"]),
            "stop_grace_period": float(grace[:-1])}


def test_every_stop_timeout_leaves_the_daemon_its_flush_time():
    stop_timeout = load_settings(config_path=DEPLOY / "taskmon.toml", environ={}).settings.stop_timeout
    waits = stop_waits()
    assert all(wait > stop_timeout + 5 for wait in waits.values()), (stop_timeout, waits)


def test_the_compose_file_runs_every_service_the_deployment_needs():
    import yaml

    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "worker", "beat", "daemon", "web"} <= set(services)
    commands = {name: " ".join(s["command"]) if isinstance(s.get("command"), list) else s.get("command", "")
                for name, s in services.items()}
    assert commands["daemon"].startswith("taskmon run") and commands["web"].startswith("taskmon serve")
    assert "worker" in commands["worker"] and "beat" in commands["beat"]
    for name in ("worker", "beat", "daemon", "web"):
        assert services[name].get("restart") == "unless-stopped", name
        assert services[name]["environment"]["TASKMON_CONFIG"] == "/etc/taskmon/taskmon.toml"


def compose_command() -> list[str]:
    """`docker compose` (the v2 plugin), else a `docker-compose` (v1) on PATH.

    Neither here: a skip on a laptop, a failure under CI=true (.ci/run installs Debian's docker-compose).
    `config` only reads and checks the file: no Docker engine is needed."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy]
    message = "neither `docker compose` nor `docker-compose` is installed"
    pytest.fail(f"CI=true and {message}", pytrace=False) if IN_CI else pytest.skip(message)


def test_docker_compose_validates_the_compose_file():
    out = subprocess.run([*compose_command(), "-f", str(DEPLOY / "docker-compose.yml"), "config", "--quiet"],
                         capture_output=True, text=True, timeout=60, cwd=DEPLOY)
    assert out.returncode == 0, out.stderr


def test_docker_compose_config_catches_a_broken_compose_file(tmp_path):
    """The validation above can fail: a service whose ports are not a list does."""
    broken = tmp_path / "docker-compose.yml"
    text = (DEPLOY / "docker-compose.yml").read_text()
    broken.write_text(text.replace("services:\n", "services:\n  broken:\n    image: redis:7\n    ports: 6379\n", 1))
    out = subprocess.run([*compose_command(), "-f", str(broken), "config", "--quiet"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode != 0 and "ports" in out.stderr, out.stderr


def test_the_systemd_units_pass_systemd_analyze_verify(tmp_path):
    analyze = need_program("systemd-analyze")
    assert {u.name for u in UNITS} == {"taskmon-daemon.service", "taskmon-web.service", "taskmon-worker.service",
                                       "taskmon-beat.service"}
    filled = []
    for unit in UNITS:
        target = tmp_path / unit.name
        target.write_text(fill_paths(unit.read_text(), config=tmp_path / "taskmon.toml", state=tmp_path,
                                     logs=tmp_path))
        filled.append(str(target))
    out = subprocess.run([analyze, "verify", *filled], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and not out.stderr.strip(), out.stderr


def test_systemd_analyze_catches_a_broken_unit(tmp_path):
    """The verify above can fail: a unit with a bad value does."""
    analyze = need_program("systemd-analyze")
    unit = tmp_path / "taskmon-daemon.service"
    text = fill_paths((DEPLOY / "systemd" / unit.name).read_text(), config=tmp_path, state=tmp_path, logs=tmp_path)
    unit.write_text(text.replace("TimeoutStopSec=30", "TimeoutStopSec=thirty"))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert "TimeoutStopSec" in out.stderr or "time value" in out.stderr


# -- supervisor ---------------------------------------------------------------------------------

class Supervisor:
    """A real supervisord running the shipped programs given, paths filled in."""

    def __init__(self, programs: list[str], *, config: Path, workdir: Path):
        self.dir = Path(tempfile.mkdtemp(prefix="tmsv"))  # a unix socket path must stay short
        self.logs = workdir / "logs"
        self.logs.mkdir()
        shipped = configparser.RawConfigParser()
        shipped.read(DEPLOY / "supervisor" / "taskmon.conf")
        kept = configparser.RawConfigParser()
        for section in programs:
            kept[section] = dict(shipped[section])
            kept[section]["user"] = getpass.getuser()
        kept["group:taskmon"] = {"programs": ",".join(s.split(":", 1)[1] for s in programs)}
        included = self.dir / "taskmon.conf"
        with open(included, "w") as fh:
            kept.write(fh)
        included.write_text(fill_paths(included.read_text(), config=config, state=workdir, logs=self.logs))
        self.sock = self.dir / "sv.sock"
        self.log = self.logs / "supervisord.log"
        self.conf = self.dir / "supervisord.conf"
        self.conf.write_text(f"""
[unix_http_server]
file={self.sock}

[supervisord]
logfile={self.log}
pidfile={self.dir / 'supervisord.pid'}
childlogdir={self.logs}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{self.sock}

[include]
files={included}
""")
        self.proc = subprocess.Popen([str(VENV / "bin" / "supervisord"), "-n", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV / "bin" / "supervisorctl"), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=timeout)

    def wait_running(self, names: list[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.ctl("status").stdout
            states = {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}
            if all(states.get(f"taskmon:{n}") == "RUNNING" for n in names):
                return
            time.sleep(0.5)
        raise AssertionError(f"not RUNNING after {timeout}s: {out}\n{self.dump()}")

    def dump(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.logs.iterdir()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                import os
                import signal

                os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_log(path: Path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"no {text!r} in {path} after {timeout}s")


def stored(engine, task_id: str) -> str | None:
    """The stored state of ``task_id``, None when the history has no row for it."""
    from sqlalchemy import select

    from storage.schema import task_runs

    with engine.connect() as conn:
        return conn.execute(select(task_runs.c.state).where(task_runs.c.task_id == task_id)).scalar()


def wait_daemon_connected(engine, timeout: float = 60) -> None:
    from storage.health import latest_status

    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            status = latest_status(conn)
        states = (status or {}).get("source_states") or {}
        if states and all(s["connected"] for s in states.values()):
            return
        time.sleep(0.3)
    raise AssertionError(f"daemon sources not connected after {timeout}s: {status}")


@pytest.mark.slow
def test_supervisor_runs_the_daemon_and_a_worker_and_stop_lets_the_daemon_flush(tmp_path, redis_url):
    if shutil.which("supervisord", path=str(VENV / "bin")) is None:
        message = "supervisord is not installed (pip install -e '.[dev]')"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    from storage.db import make_engine, upgrade
    from storage.health import latest_status
    from tasks.client import client_app
    from tests.daemon_helpers import wait_for_runs

    db_url = f"sqlite:///{tmp_path / 'taskmon.db'}"
    config = tmp_path / "taskmon.toml"
    config.write_text(f'broker_url = "{redis_url}"\ndatabase_url = "{db_url}"\nstop_timeout = 8.0\n'
                      'status_interval = 0.5\nenable_events = false\n')
    engine = make_engine(db_url)
    upgrade(engine)
    sv = Supervisor(["program:taskmon-daemon", "program:taskmon-worker"], config=config, workdir=tmp_path)
    app = client_app(redis_url)
    try:
        sv.wait_running(["taskmon-daemon", "taskmon-worker"])
        wait_daemon_connected(engine)
        task_id = app.send_task("demo.add", (2, 3), queue="default").id
        try:
            run = wait_for_runs(engine, [task_id], states={"SUCCESS"}, timeout=60)[task_id]
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{sv.dump()}") from None
        assert run["name"] == "demo.add"

        # Hold the history's write lock: the daemon keeps the next task's events in memory...
        lock = sqlite3.connect(tmp_path / "taskmon.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        held_id = app.send_task("demo.add", (4, 5), queue="default").id
        wait_log(sv.logs / "worker.log", f"demo.add[{held_id}] succeeded")
        time.sleep(1.0)  # the daemon has read the events by now
        assert not stored(engine, held_id), "the write lock did not hold the daemon's write"
        # ...until it is told to stop; the lock goes while it is stopping, and it must write them then.
        stopping = subprocess.Popen([str(VENV / "bin" / "supervisorctl"), "-c", str(sv.conf), "stop",
                                     "taskmon:taskmon-daemon"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
        time.sleep(2.0)
        lock.execute("ROLLBACK")
        lock.close()
        out, _ = stopping.communicate(timeout=60)
        assert stopping.returncode == 0 and "stopped" in out, out
        assert stored(engine, held_id) == "SUCCESS", sv.dump()
        log = sv.log.read_text()
        assert "stopped: taskmon-daemon (exit status 0)" in log, log
        assert "SIGKILL" not in log, log
        with engine.connect() as conn:
            status = latest_status(conn)
        assert status["stopped_at"] is not None, status  # it wrote its last status on the way out
        assert sv.ctl("status", "taskmon:taskmon-worker").stdout.split()[1] == "RUNNING"
    finally:
        app.close()
        sv.close()
        engine.dispose()
