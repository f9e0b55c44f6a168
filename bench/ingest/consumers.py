"""The consumers bench/ingest measures, each run as its own process against the bench Redis.

Every consumer answers the same four questions: start, how far it has got (``progress``,
compared with ``target``), which final state each task has (``stop_and_collect``), and its
memory (``rss``).
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FINAL_STATES = ("SUCCESS", "FAILURE")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process and its descendants (taskmon's helper), summed, in kB.

    The sum of peaks is an upper bound of the tree's peak: the processes need not peak together.
    """
    out: dict[str, int] = {}
    for one in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{one}/status") as fh:
                for line in fh:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        key, value = line.split(":", 1)
                        out[key] = out.get(key, 0) + int(value.split()[0])
        except FileNotFoundError:
            pass
    return out


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as fh:
                    children = [int(c) for c in fh.read().split()]
            except FileNotFoundError:
                continue
            out += children
            todo += children
    return out


class Consumer:
    key = ""
    label = ""

    def __init__(self, workdir: Path, broker_url: str):
        self.workdir = workdir
        self.broker_url = broker_url
        self.proc: subprocess.Popen | None = None
        self.log: Path | None = None

    # -- lifecycle --
    def start(self, step: str, tasks: int) -> None:
        raise NotImplementedError

    def progress(self) -> int:
        raise NotImplementedError

    def target(self, published: dict) -> int:
        raise NotImplementedError

    def stop_and_collect(self) -> tuple[dict[str, str], dict]:
        """Stop the process; (task_id -> state, extra facts such as reconnect counters)."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove what this step created (databases, files)."""

    # -- helpers --
    def _spawn(self, args: list[str], step: str, env: dict | None = None) -> None:
        self.log = self.workdir / f"{step}.log"
        self.proc = subprocess.Popen(args, cwd=REPO, env=dict(os.environ, **(env or {})),
                                     stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> dict[str, int]:
        return proc_status(self.proc.pid) if self.alive() else {}

    def cpu_pids(self) -> list[int]:
        """The processes whose CPU time is this consumer's: its own and its descendants (taskmon's helper)."""
        return [self.proc.pid, *descendants(self.proc.pid)] if self.alive() else []

    def server_pids(self) -> list[int]:
        """Server processes working for this consumer alone (PostgreSQL's backends of its database)."""
        return []

    def terminate(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log and self.log.exists() else ""


def taskmon_command() -> list[str]:
    script = Path(sys.executable).with_name("taskmon")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli"]


class Taskmon(Consumer):
    """`taskmon run --source pubsub --no-enable-events` into a fresh database per step."""

    extra_args: tuple[str, ...] = ()  # more `taskmon run` options (run.py --taskmon-args)

    def start(self, step: str, tasks: int) -> None:
        self.db_url = self.create_database(step)
        self._spawn([*taskmon_command(), "-v", "run", "--source", "pubsub", "--no-enable-events",
                     "--db", self.db_url, "--broker", self.broker_url, *self.extra_args], step)

    def target(self, published: dict) -> int:
        return published["tasks"]

    def stop_and_collect(self) -> tuple[dict[str, str], dict]:
        code = self.terminate()
        states = dict(self.query("SELECT task_id, state FROM task_runs"))
        counters = {}
        rows = self.query("SELECT counters FROM daemon_status ORDER BY heartbeat_at DESC")
        if rows:
            counters = json.loads(rows[0][0])
        gaps = self.query("SELECT reason, COALESCE(events_lost, 0) FROM receiver_gaps")
        # The stored status is the last heartbeat's; the daemon logs its final count as it stops.
        stopped = re.search(r"stopped: (\d+) events received", self.log_tail(20_000))
        return states, {
            "exit_code": code,
            "events_received": int(stopped.group(1)) if stopped else counters.get("events_received"),
            "events_dropped": counters.get("events_dropped", 0),
            "reconnects": counters.get("pubsub.disconnects", 0),
            "gaps": [f"{reason}:{lost}" for reason, lost in gaps],
        }

    def progress(self) -> int:
        rows = self.query("SELECT COUNT(*) FROM task_runs WHERE state IN ('SUCCESS', 'FAILURE')")
        return rows[0][0] if rows else 0

    def create_database(self, step: str) -> str:
        raise NotImplementedError

    def query(self, sql: str) -> list[tuple]:
        raise NotImplementedError


class TaskmonSQLite(Taskmon):
    key = "taskmon-sqlite"
    label = "taskmon -> SQLite"

    def create_database(self, step: str) -> str:
        self.path = self.workdir / f"{step}.db"
        return f"sqlite:///{self.path}"

    def query(self, sql: str) -> list[tuple]:
        if not self.path.exists():
            return []
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql).fetchall()
        except sqlite3.OperationalError:  # schema not created yet
            return []
        finally:
            con.close()

    def cleanup(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


class TaskmonPostgres(Taskmon):
    key = "taskmon-postgres"
    label = "taskmon -> PostgreSQL"

    def __init__(self, workdir: Path, broker_url: str, admin_url: str):
        super().__init__(workdir, broker_url)
        self.admin_url = admin_url  # postgresql+psycopg://user@127.0.0.1:5432/db
        self.conn = None
        self.dbname = ""

    def _dsn(self, dbname: str) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.admin_url).set(drivername="postgresql", database=dbname).render_as_string(
            hide_password=False)

    def _admin(self, sql: str) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        with psycopg.connect(self._dsn(make_url(self.admin_url).database), autocommit=True) as conn:
            conn.execute(sql)

    def create_database(self, step: str) -> str:
        from sqlalchemy.engine import make_url

        self.dbname = f"taskmon_bench_{os.getpid()}_{step.replace('-', '_')}"
        self._admin(f'DROP DATABASE IF EXISTS "{self.dbname}"')
        self._admin(f'CREATE DATABASE "{self.dbname}"')
        return make_url(self.admin_url).set(database=self.dbname).render_as_string(hide_password=False)

    def server_pids(self) -> list[int]:
        # The bench's own progress connection (this process's) is left out: it serves the bench.
        import psycopg

        from cpu import backend_pids

        try:
            if self.conn is None:
                self.conn = psycopg.connect(self._dsn(self.dbname), autocommit=True)
            return backend_pids(self.conn, self.dbname)
        except psycopg.Error:
            return []

    def query(self, sql: str) -> list[tuple]:
        import psycopg

        try:
            if self.conn is None:
                self.conn = psycopg.connect(self._dsn(self.dbname), autocommit=True)
            return self.conn.execute(sql).fetchall()
        except psycopg.errors.UndefinedTable:
            return []

    def cleanup(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.dbname:
            self._admin(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')
            self.dbname = ""


class CeleryReceiver(Consumer):
    """celery.events.EventReceiver in its own process (bench/ingest/peer_receiver.py)."""

    def __init__(self, workdir: Path, broker_url: str, mode: str):
        super().__init__(workdir, broker_url)
        self.mode = mode
        self.key = f"celery-{mode}"
        self.label = {"bare": "celery EventReceiver (bare handler)", "state": "celery EventReceiver + State"}[mode]

    def start(self, step: str, tasks: int) -> None:
        self.status = self.workdir / f"{step}.status.json"
        self.dump = self.workdir / f"{step}.dump.json"
        self._spawn([sys.executable, str(HERE / "peer_receiver.py"), "--broker", self.broker_url, "--mode", self.mode,
                     "--status", str(self.status), "--dump", str(self.dump), "--max-tasks", str(max(tasks * 2, 10_000))],
                    step)

    def target(self, published: dict) -> int:
        return published["events"]

    def progress(self) -> int:
        try:
            return json.loads(self.status.read_text())["events"]
        except (FileNotFoundError, ValueError, KeyError):
            return 0

    def stop_and_collect(self) -> tuple[dict[str, str], dict]:
        code = self.terminate(60)
        try:
            data = json.loads(self.dump.read_text())
        except (FileNotFoundError, ValueError):
            return {}, {"exit_code": code, "error": "no dump written", "log": self.log_tail()}
        return data["tasks"], {"exit_code": code, "events_received": data["counts"]["events"],
                               "reconnects": data["counts"]["reconnects"]}

    def cleanup(self) -> None:
        for path in (self.status, self.dump):
            path.unlink(missing_ok=True)


class Flower(Consumer):
    """The real `celery flower` (in-memory state), read back through its HTTP API on 127.0.0.1."""

    key = "flower"
    label = "Flower (in memory)"

    def __init__(self, workdir: Path, broker_url: str, port: int):
        super().__init__(workdir, broker_url)
        self.port = port

    def start(self, step: str, tasks: int) -> None:
        celery = Path(sys.executable).with_name("celery")
        base = [str(celery)] if celery.exists() else [sys.executable, "-m", "celery"]
        # --enable_events=False: there are no workers to enable, and taskmon runs with --no-enable-events too.
        self._spawn([*base, "--broker", self.broker_url, "flower", "--address=127.0.0.1", f"--port={self.port}",
                     "--persistent=False", f"--max_tasks={max(tasks * 2, 100_000)}", "--enable_events=False",
                     "--logging=warning"], step, env={"FLOWER_UNAUTHENTICATED_API": "true"})

    def wait_http(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._get("/healthcheck", 2).strip() == b"OK":
                    return
            except OSError:
                pass
            if not self.alive():
                raise RuntimeError(f"flower exited:\n{self.log_tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"flower did not answer on 127.0.0.1:{self.port}:\n{self.log_tail()}")

    def _get(self, path: str, timeout: float) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
            return resp.read()

    def target(self, published: dict) -> int:
        # flower_events_total counts task events only (heartbeats go to other metrics).
        return published["events"] - published["heartbeats"]

    def progress(self) -> int:
        try:
            text = self._get("/metrics", 30).decode()
        except OSError:
            return -1
        total = 0.0
        for line in text.splitlines():
            if line.startswith("flower_events_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def stop_and_collect(self) -> tuple[dict[str, str], dict]:
        states: dict[str, str] = {}
        error = None
        page = 20_000
        try:
            offset = 0
            while True:
                data = json.loads(self._get(f"/api/tasks?limit={page}&offset={offset}", 300))
                states.update({task_id: task.get("state") for task_id, task in data.items()})
                if len(data) < page:
                    break
                offset += page
        except OSError as exc:
            error = f"could not read /api/tasks: {exc}"
        log = self.log_tail(200_000)
        reconnects = log.count("Failed to capture events")
        code = self.terminate()
        extra = {"exit_code": code, "reconnects": reconnects}
        if error:
            extra["error"] = error
        return states, extra


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
