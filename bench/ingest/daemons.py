"""bench/ingest --daemons N: one daemon, then N, reading one relay stream into one PostgreSQL history.

The generator's events are written to the relay stream (one entry per message, as the relay
writes them) while the daemons are running; a run is lossless when every task reached its final
state in task_runs and no entry is left pending in the consumer group. The figures: events/s
from the first entry written to the last task final, and CPU seconds (user + system, every
daemon process and its helpers, from /proc) per million events.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import redis

import consumers as cons
import generator

from monitor.sources import decode_kombu_message
from monitor.sources.redis_stream import pending_count
from tasks.relay_format import FIELD

STREAM = "taskmon:bench"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class DaemonsRun:
    daemons: int
    events: int
    tasks: int
    final_ok: int
    pending_left: int
    lossless: bool
    seconds: float | None
    events_per_second: float | None
    cpu_seconds: float
    cpu_seconds_per_million: float
    per_daemon_events: list[int]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants so far."""
    total = 0
    for one in [pid, *cons.descendants(pid)]:
        try:
            with open(f"/proc/{one}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (FileNotFoundError, IndexError):
            pass
    return total / TICKS


def stream_entries(plan: generator.Plan) -> list[bytes]:
    """The plan's PUBLISH commands -> the JSON event lists the relay would have written."""
    out = []
    for command in plan.commands:
        # *3 $7 PUBLISH $n channel $m payload: the payload is the last bulk string
        _, _, rest = command.partition(b"PUBLISH\r\n")
        length, _, rest = rest[1:].partition(b"\r\n")
        rest = rest[int(length) + 2:]
        length, _, payload = rest[1:].partition(b"\r\n")
        out.append(orjson.dumps(decode_kombu_message(payload[:int(length)])))
    return out


def one_run(n: int, entries: list[bytes], expected: dict[str, str], redis_url: str, admin_url: str, workdir: Path,
            timeout: float) -> DaemonsRun:
    client = redis.Redis.from_url(redis_url)
    client.delete(STREAM)
    db = cons.TaskmonPostgres(workdir, redis_url, admin_url)
    db_url = db.create_database(f"daemons{n}")
    procs = []
    try:
        for i in range(n):
            runner = cons.Consumer(workdir, redis_url)
            runner._spawn([*cons.taskmon_command(), "-v", "run", "--source", "stream", "--no-enable-events",
                           "--db", db_url, "--broker", redis_url],
                          f"daemons{n}-{i}", env={"TASKMON_RELAY_STREAM": STREAM, "TASKMON_STATUS_INTERVAL": "1"})
            procs.append(runner)
            if i == 0:  # the first creates the schema; the others start on it
                _wait(lambda: db.query("SELECT count(*) FROM daemon_status"), "the first daemon's heartbeat", runner)
        _wait(lambda: (db.query("SELECT count(*) FROM daemon_status") or [(0,)])[0][0] >= n
              and client.exists(STREAM), "every daemon's heartbeat", procs[-1])
        cpu_before = sum(cpu_seconds(p.proc.pid) for p in procs)
        started = time.monotonic()
        pipe = client.pipeline(transaction=False)
        for i, entry in enumerate(entries):
            pipe.xadd(STREAM, {FIELD: entry})
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()
        seconds = None
        deadline = started + timeout
        while time.monotonic() < deadline:
            done = db.query("SELECT count(*) FROM task_runs WHERE state IN ('SUCCESS', 'FAILURE')")[0][0]
            if done >= len(expected):
                seconds = time.monotonic() - started
                break
            time.sleep(0.1)
        cpu = sum(cpu_seconds(p.proc.pid) for p in procs) - cpu_before
        states = dict(db.query("SELECT task_id, state FROM task_runs"))
        time.sleep(1.5)  # the last acknowledgements follow the last commit
        pending = pending_count(client, STREAM)
    finally:
        for p in procs:
            p.terminate()
    per_daemon = [json.loads(c)["events_received"] for (c,) in db.query("SELECT counters FROM daemon_status")]
    db.cleanup()
    final_ok = sum(1 for task_id, state in expected.items() if states.get(task_id) == state)
    events = sum(len(orjson.loads(e)) for e in entries)
    return DaemonsRun(n, events, len(expected), final_ok, pending, final_ok == len(expected) and pending == 0,
                      None if seconds is None else round(seconds, 2),
                      None if seconds is None else round(events / seconds), round(cpu, 2),
                      round(cpu / events * 1e6, 1), per_daemon)


def _wait(check, what: str, consumer: cons.Consumer, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if not consumer.alive():
            raise RuntimeError(f"a daemon exited while waiting for {what}:\n{consumer.log_tail()}")
        time.sleep(0.2)
    raise RuntimeError(f"not within {timeout:.0f}s: {what}\n{consumer.log_tail()}")


def run_daemons(n: int, events: int, redis_url: str, admin_url: str, workdir: Path,
                timeout: float = 300.0) -> list[DaemonsRun]:
    """One daemon, then ``n``, on the same entries; printed as they finish."""
    plan = generator.build_plan(events, 30_000, seed=2)
    entries = stream_entries(plan)
    runs = []
    for count in (1, n):
        run = one_run(count, entries, plan.expected, redis_url, admin_url, workdir, timeout)
        runs.append(run)
        print(f"  {count} daemon(s): {run.events:,} events, final ok {run.final_ok:,}/{run.tasks:,}, "
              f"pending {run.pending_left}, {run.events_per_second or 'never drained'} events/s, "
              f"CPU {run.cpu_seconds} s ({run.cpu_seconds_per_million} s per 1M events), "
              f"events per daemon {run.per_daemon_events}", flush=True)
    return runs


def table(runs: list[DaemonsRun]) -> str:
    out = ["| daemons | events | tasks final ok | pending left | lossless | events/s (write to final) "
           "| CPU s per 1M events | events read per daemon |",
           "| ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for r in runs:
        rate = f"{r.events_per_second:,}" if r.events_per_second else "never drained"
        out.append(f"| {r.daemons} | {r.events:,} | {r.final_ok:,}/{r.tasks:,} | {r.pending_left} | "
                   f"{'yes' if r.lossless else 'no'} | {rate} | {r.cpu_seconds_per_million} | "
                   f"{', '.join(f'{e:,}' for e in r.per_daemon_events)} |")
    return "\n".join(out)


def as_json(runs: list[DaemonsRun]) -> list[dict]:
    return [asdict(r) for r in runs]
