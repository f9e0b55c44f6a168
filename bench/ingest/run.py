"""bench/ingest: taskmon vs celery's EventReceiver vs Flower, one Redis, the same rates, one run.

For each rate of the ladder the generator builds one set of real kombu-format event messages;
then, one consumer at a time (each in its own process), the bench starts the consumer, waits
until Redis shows it subscribed, publishes the messages at the rate, waits (bounded) for the
consumer to drain, and counts the tasks that reached their correct final state in the store
(taskmon) or in memory (the peers). A rate is lossless for a consumer when every task did.
Every step reads the CPU seconds (user+sys, /proc) the consumer's processes spent from the
start of publishing to the drain, and for PostgreSQL those of the server backends serving its
database (pg_stat_activity by database). Finally each taskmon consumer takes 1,000,000 events
at each --rss-rates rate and its RSS is read from /proc.

    /tmp/venvb/bin/python bench/ingest/run.py            # the full run (about 15 minutes)
    /tmp/venvb/bin/python bench/ingest/run.py --rates 10000,30000 --events 100000 --consumers taskmon-sqlite

Prints the tables and machine facts; writes the same as JSON under bench/results/.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import consumers as cons  # noqa: E402
import generator  # noqa: E402
from cpu import CpuMeter  # noqa: E402

from monitor.redis_server import RedisServer  # noqa: E402

REPO = HERE.parent.parent
ALL_CONSUMERS = ("taskmon-sqlite", "taskmon-postgres", "celery-bare", "celery-state", "flower")
CUT_OFF_LOG = "for overcoming of output buffer limits"


# -- the generator, in a process of its own (built once per rate, published once per consumer) --

def _generator_loop(conn, redis_url: str) -> None:
    plan = None
    while True:
        cmd, kwargs = conn.recv()
        if cmd == "build":
            plan = None
            gc.collect()
            started = time.perf_counter()
            plan = generator.build_plan(**kwargs)
            gc.collect()
            gc.freeze()  # the plan's millions of objects stay out of later collections
            conn.send({"expected": plan.expected, "events": plan.n_events, "messages": len(plan.commands),
                       "heartbeats": plan.n_heartbeats, "multi_messages": plan.n_multi,
                       "single_messages": plan.n_single, "payload_bytes": plan.n_bytes,
                       "build_seconds": round(time.perf_counter() - started, 1)})
        elif cmd == "publish":
            gc.disable()
            try:
                conn.send(asdict(generator.publish(redis_url, plan, **kwargs)))
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which decides
                conn.send({"error": f"{type(exc).__name__}: {exc}"})
            finally:
                gc.enable()
        else:
            return


class GeneratorProcess:
    def __init__(self, redis_url: str):
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_generator_loop, args=(child, redis_url), name="bench-generator", daemon=True)
        self.proc.start()

    def build(self, events: int, rate: float, seed: int, single: bool = False) -> dict:
        self.conn.send(("build", {"n_events": events, "rate": rate, "seed": seed, "single": single}))
        return self.conn.recv()

    def publish(self, rate: float, max_seconds: float) -> dict:
        self.conn.send(("publish", {"rate": rate, "max_seconds": max_seconds}))
        result = self.conn.recv()
        if "error" in result:
            raise RuntimeError(f"generator: {result['error']}")
        return result

    def close(self) -> None:
        self.conn.send(("quit", {}))
        self.proc.join(10)


# -- one step: one consumer at one rate --

@dataclass
class Step:
    consumer: str
    label: str
    target_rate: int
    achieved_rate: float = 0.0
    events: int = 0
    tasks: int = 0
    delivered: int = 0
    wrong_state: int = 0
    missing: int = 0
    lossless: bool = False
    drain_seconds: float | None = None  # publish end -> every task final (None: never)
    subscriber_cut: bool = False  # the subscriber Redis saw at the start was gone at the end
    redis_cutoffs: int = 0  # "closed for overcoming of output buffer limits" lines in the Redis log
    unheard_messages: int = 0  # PUBLISH replies of 0: nobody subscribed at that moment
    reconnects: int = 0  # as the consumer itself counted them
    events_dropped: int = 0  # taskmon: dropped on internal buffer overflow
    rss_mb: float | None = None
    peak_rss_mb: float | None = None
    idle_rss_mb: float | None = None  # sustained runs: VmRSS --rss-idle seconds after the drain
    load_before: float = 0.0
    handled: int = 0  # events the consumer received (its own count; Flower: task events), <= events if cut
    cpu_s: float | None = None  # user+sys of the consumer's processes from publishing to drained
    server_cpu_s: float | None = None  # PostgreSQL: of the backends serving the consumer's database
    generator_cpu_s: float | None = None  # the publishing process, same window
    redis_cpu_s: float | None = None  # redis-server, same window
    notes: list[str] = field(default_factory=list)

    def cpu_per_million(self) -> float | None:
        """CPU seconds (consumer + its server backends) per 1,000,000 events it handled."""
        handled = self.handled or self.events
        if self.cpu_s is None or not handled:
            return None
        return round((self.cpu_s + (self.server_cpu_s or 0.0)) * 1e6 / handled, 1)

    @property
    def delivered_pct(self) -> float:
        return 100.0 * self.delivered / self.tasks if self.tasks else 0.0


def subscribers(client: redis.Redis) -> dict[str, dict]:
    return {c["id"]: c for c in client.client_list() if int(c.get("psub", 0)) > 0 or int(c.get("sub", 0)) > 0}


def wait_subscribed(client: redis.Redis, consumer: cons.Consumer, timeout: float = 60.0) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.execute_command("PUBSUB", "NUMPAT") >= 1:
            subs = subscribers(client)
            if subs:
                return set(subs)
        if not consumer.alive():
            raise RuntimeError(f"{consumer.key} exited before subscribing:\n{consumer.log_tail()}")
        time.sleep(0.1)
    raise RuntimeError(f"{consumer.key} did not subscribe within {timeout:.0f}s:\n{consumer.log_tail()}")


def wait_unsubscribed(client: redis.Redis, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (subscribers(client) or client.execute_command("PUBSUB", "NUMPAT")):
        time.sleep(0.1)


def drain(consumer: cons.Consumer, target: int, settle: float, timeout: float,
          tick=lambda: None) -> tuple[float | None, int]:
    """Wait until progress reaches target (-> seconds taken) or stops moving for ``settle`` s (-> None);
    ``tick()`` at every look (CPU samples: a process that exits meanwhile, such as a replaced
    helper, keeps what it spent)."""
    start = time.monotonic()
    last, last_change = None, start
    value = 0
    while True:
        value = consumer.progress()
        now = time.monotonic()
        if value >= target:
            return now - start, value
        if value != last:
            last, last_change = value, now
        elif now - last_change >= settle:
            return None, value
        if now - start >= timeout or not consumer.alive():
            return None, value
        tick()
        time.sleep(0.25)


def redis_cutoffs(log: Path) -> int:
    try:
        return log.read_text(errors="replace").count(CUT_OFF_LOG)
    except FileNotFoundError:
        return 0


def run_step(consumer: cons.Consumer, gen: GeneratorProcess, plan: dict, rate: int, server: RedisServer,
             client: redis.Redis, args, idle_rss: float = 0.0) -> Step:
    step = Step(consumer.key, consumer.label, rate, tasks=len(plan["expected"]), load_before=os.getloadavg()[0])
    name = f"{consumer.key}-{rate}"
    wait_unsubscribed(client)
    cutoffs_before = redis_cutoffs(server.directory / "redis.log")
    consumer.start(name, step.tasks)
    try:
        if isinstance(consumer, cons.Flower):
            consumer.wait_http()
        first_subscribers = wait_subscribed(client, consumer)
        time.sleep(args.warmup)
        planned = plan["events"] / rate
        own, backends, others = CpuMeter(), CpuMeter(), {"generator": CpuMeter(), "redis": CpuMeter()}
        other_pids = {"generator": [gen.proc.pid], "redis": [server.proc.pid] if server.proc else []}
        own.start(consumer.cpu_pids())
        backends.start(consumer.server_pids())
        for key, meter in others.items():
            meter.start(other_pids[key])
        published = gen.publish(rate, max_seconds=3 * planned + 10)
        own.sample(consumer.cpu_pids())  # the helper the daemon had while the events came
        step.events, step.achieved_rate = published["events"], published["achieved_rate"]
        step.unheard_messages = published["zero_receivers"]
        if published["stopped_early"]:
            step.notes.append("generator hit its time limit")
        target = consumer.target({"events": published["events"], "tasks": step.tasks,
                                  "heartbeats": plan["heartbeats"]})
        def tick():
            own.sample(consumer.cpu_pids())
            backends.sample(consumer.server_pids())

        step.drain_seconds, progress = drain(consumer, target, args.settle, args.drain_timeout, tick)
        own.sample(consumer.cpu_pids())
        backends.sample(consumer.server_pids())
        for key, meter in others.items():
            meter.sample(other_pids[key])
        step.generator_cpu_s, step.redis_cpu_s = others["generator"].seconds(), others["redis"].seconds()
        step.cpu_s = own.seconds()
        step.server_cpu_s = backends.seconds() if isinstance(consumer, cons.TaskmonPostgres) else None
        if step.drain_seconds is not None:
            step.drain_seconds = round(step.drain_seconds, 1)
        mem = consumer.rss()
        if mem:
            step.rss_mb, step.peak_rss_mb = round(mem["VmRSS"] / 1024, 1), round(mem["VmHWM"] / 1024, 1)
        if idle_rss and mem:
            time.sleep(idle_rss)  # what stays once the daemon is idle again, as it is between bursts
            idle = consumer.rss()
            step.idle_rss_mb = round(idle["VmRSS"] / 1024, 1) if idle else None
        step.subscriber_cut = not (first_subscribers & set(subscribers(client)))
        step.redis_cutoffs = redis_cutoffs(server.directory / "redis.log") - cutoffs_before
        states, extra = consumer.stop_and_collect()
        # What it spent its CPU on: a subscriber Redis cut off handled fewer events than were published.
        step.handled = int(extra.get("events_received") or (progress if isinstance(consumer, cons.Flower) else 0)
                           or step.events)
        step.reconnects = int(extra.get("reconnects") or 0)
        step.events_dropped = int(extra.get("events_dropped") or 0)
        if step.handled <= 0:  # Flower's /metrics did not answer at the end: how much it handled is unknown
            step.notes.append("events handled unknown (its progress could not be read); CPU is per event published")
            step.handled = step.events
        elif step.handled < step.events:
            step.notes.append(f"handled {step.handled:,} of {step.events:,} events published"
                              + (" (cut by Redis: its CPU is for what it handled)" if cut(step) else ""))
        if extra.get("gaps"):
            step.notes.append("taskmon receiver_gaps: " + ", ".join(extra["gaps"][:5]))
        if extra.get("error"):
            step.notes.append(extra["error"])
        expected = plan["expected"]
        delivered = sum(1 for task_id, state in expected.items() if states.get(task_id) == state)
        missing = sum(1 for task_id in expected if task_id not in states)
        step.delivered, step.missing = delivered, missing
        step.wrong_state = step.tasks - delivered - missing
        step.lossless = delivered == step.tasks and step.tasks > 0
        if step.achieved_rate < 0.97 * rate:
            step.notes.append(f"generator reached only {step.achieved_rate:,.0f} events/s")
    finally:
        consumer.terminate()
        consumer.cleanup()
    return step


def rss_run(consumer: cons.Taskmon, gen: GeneratorProcess, plan: dict, rate: int, server: RedisServer,
            client: redis.Redis, args) -> dict:
    """taskmon takes --rss-events events at ``rate``; VmRSS/VmHWM after it drained, CPU per 1M events."""
    step = run_step(consumer, gen, plan, rate, server, client, args, idle_rss=args.rss_idle)
    return {"consumer": consumer.key, "label": consumer.label, "cpu_per_million": step.cpu_per_million(),
            "cpu_s": step.cpu_s, "server_cpu_s": step.server_cpu_s,
            "generator_cpu_s": step.generator_cpu_s, "redis_cpu_s": step.redis_cpu_s,
            "events": step.events, "rate": rate, "achieved_rate": step.achieved_rate,
            "tasks": step.tasks, "delivered": step.delivered, "lossless": step.lossless,
            "idle_rss_mb": step.idle_rss_mb, "idle_seconds": args.rss_idle,
            "drain_seconds": step.drain_seconds, "rss_mb": step.rss_mb, "peak_rss_mb": step.peak_rss_mb,
            "events_dropped": step.events_dropped, "notes": step.notes}


# -- facts and tables --

def machine_facts(client: redis.Redis, postgres_url: str | None) -> dict:
    cpu = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    facts = {
        "nproc": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": client.info("server")["redis_version"],
        "sqlite": sqlite3.sqlite_version,
        "postgresql": None,
    }
    for pkg in ("celery", "kombu", "flower", "redis", "hiredis", "orjson", "SQLAlchemy", "psycopg", "tornado"):
        key = "redis-py" if pkg == "redis" else pkg.lower()
        try:
            facts[key] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            facts[key] = None
    if postgres_url:
        try:
            import psycopg
            from sqlalchemy.engine import make_url

            dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                facts["postgresql"] = conn.execute("SHOW server_version").fetchone()[0]
        except Exception as exc:  # noqa: BLE001 - a fact we could not read is reported as such
            facts["postgresql"] = f"unreachable ({type(exc).__name__})"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "monitor", "storage", "cli.py"], cwd=REPO,
                               capture_output=True, text=True)
        facts["taskmon_commit"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        facts["taskmon_commit"] = None
    return facts


def fmt_rate(rate: float) -> str:
    return f"{rate / 1000:g}k"


def highest(row: dict[int, Step], rates: list[int], ok) -> str:
    """The highest rate up to which every measured rate passed ``ok``; later passing rates noted."""
    best = None
    for rate in rates:
        if rate not in row:
            continue
        if not ok(row[rate]):
            break
        best = rate
    text = f"{best:,}" if best else "none"
    later = [r for r in rates if r in row and ok(row[r]) and r > (best or 0)]
    if later:
        text += f" (also {', '.join(fmt_rate(r) for r in later)})"
    return text


def cut(step: Step) -> bool:
    return step.subscriber_cut or step.redis_cutoffs > 0


def kept_up(step: Step, max_drain: float) -> bool:
    return step.lossless and step.drain_seconds is not None and step.drain_seconds <= max_drain


def tables(steps: list[Step], rates: list[int], order: list[str], max_drain: float) -> str:
    labels = {s.consumer: s.label for s in steps}
    out = ["| consumer | " + " | ".join(f"{fmt_rate(r)}/s" for r in rates)
           + f" | highest lossless | lossless and drained <= {max_drain:g} s | CPU s per 1M events "
           f"({' / '.join(fmt_rate(r) for r in rates)}) |",
           "| --- | " + " | ".join("---:" for _ in rates) + " | ---: | ---: | ---: |"]
    for key in order:
        row = {s.target_rate: s for s in steps if s.consumer == key}
        if not row:
            continue
        cells = []
        for rate in rates:
            s = row.get(rate)
            if s is None:
                cells.append("-")
            else:
                mark = "" if s.lossless else (" (cut)" if s.subscriber_cut or s.redis_cutoffs else "")
                cells.append(f"{s.delivered_pct:.2f}%{mark}")
        # A consumer Redis cut off did less work than the others (and was starved of CPU, or it would
        # not have fallen behind): its figure is shown, marked, and is not comparable.
        cpu = " / ".join("-" if row.get(r) is None or row[r].cpu_per_million() is None
                         else f"{row[r].cpu_per_million():.0f}" + (" (cut)" if cut(row[r]) else "")
                         for r in rates)
        out.append(f"| {labels[key]} | " + " | ".join(cells) + f" | {highest(row, rates, lambda s: s.lossless)} | "
                   f"{highest(row, rates, lambda s: kept_up(s, max_drain))} | {cpu} |")
    return "\n".join(out)


def others(s) -> str:
    """CPU s of the generator and of redis-server over a step (a Step or a sustained run's dict)."""
    gen, red = (s.get("generator_cpu_s"), s.get("redis_cpu_s")) if isinstance(s, dict) else (s.generator_cpu_s,
                                                                                                s.redis_cpu_s)
    return "-" if gen is None else f"{gen:.1f} / {red:.1f}"


def details(steps: list[Step]) -> str:
    out = ["| consumer | target/s | achieved/s | tasks | final ok | missing | wrong | drain s | cut by Redis "
           "| unheard msgs | reconnects | dropped | RSS MB (peak) | CPU s (server) | CPU s generator / Redis | load |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: "
           "| ---: |"]
    for s in steps:
        cut = "yes" if (s.subscriber_cut or s.redis_cutoffs) else "no"
        drain_txt = f"{s.drain_seconds:.1f}" if s.drain_seconds is not None else "never"
        rss = f"{s.rss_mb:.0f} ({s.peak_rss_mb:.0f})" if s.rss_mb is not None else "-"
        cpu = "-" if s.cpu_s is None else f"{s.cpu_s:.1f}" + (f" ({s.server_cpu_s:.1f})" if s.server_cpu_s is not None else "")
        out.append(f"| {s.label} | {s.target_rate:,} | {s.achieved_rate:,.0f} | {s.tasks:,} | {s.delivered:,} "
                   f"| {s.missing:,} | {s.wrong_state:,} | {drain_txt} | {cut} | {s.unheard_messages:,} "
                   f"| {s.reconnects} | {s.events_dropped:,} | {rss} | {cpu} | {others(s)} | {s.load_before:.2f} |")
    notes = [f"- {s.label} @ {s.target_rate:,}/s: {'; '.join(s.notes)}" for s in steps if s.notes]
    return "\n".join(out + ([""] + notes if notes else []))


def facts_text(facts: dict) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in facts.items())


# -- main --

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="10000,20000,30000,40000,50000",
                        help="comma-separated events/s ladder (default: %(default)s)")
    parser.add_argument("--events", type=int, default=300_000, help="events per consumer per rate (default: %(default)s)")
    parser.add_argument("--consumers", default=",".join(ALL_CONSUMERS), help="subset of: " + ", ".join(ALL_CONSUMERS))
    parser.add_argument("--rss-events", type=int, default=1_000_000,
                        help="events of taskmon's sustained runs (each taskmon consumer: RSS, drain, CPU); 0 skips them "
                             "(default: %(default)s)")
    parser.add_argument("--rss-idle", type=float, default=5.0,
                        help="sustained runs: read VmRSS again this many seconds after the drain (default: %(default)s)")
    parser.add_argument("--rss-rates", default="20000,25000,30000",
                        help="rates of the sustained taskmon runs, comma-separated (default: %(default)s)")
    parser.add_argument("--sustained-messages", default="multi",
                        help="message shapes of the sustained runs, comma-separated: multi (task.multi of 1-10 "
                             "events, as prefork workers send), single (one event per message) (default: %(default)s)")
    parser.add_argument("--postgres", default=os.environ.get("TASKMON_BENCH_POSTGRES_URL",
                                                            "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
                        help="PostgreSQL server to create the bench databases on (default: %(default)s)")
    parser.add_argument("--drain-timeout", type=float, default=120.0,
                        help="most seconds to wait for a consumer after publishing (default: %(default)s)")
    parser.add_argument("--kept-up-drain", type=float, default=2.0,
                        help="a lossless step also 'kept up' if it drained within this many seconds (default: %(default)s)")
    parser.add_argument("--settle", type=float, default=6.0,
                        help="a consumer whose progress stands still this long is done (default: %(default)s)")
    parser.add_argument("--pubsub-limit", metavar="'HARD SOFT SECONDS'",
                        help="Redis's client-output-buffer-limit for pub/sub subscribers (default: Redis's own, "
                             "32mb 8mb 60); '0 0 0' never cuts a subscriber off, so every consumer handles every "
                             "event and the CPU column compares the same work")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds between subscribing and publishing")
    parser.add_argument("--taskmon-args", default="", help="extra `taskmon run` options, e.g. '--batch-size 20000'")
    parser.add_argument("--out", help="JSON file (default: bench/results/ingest-<time>.json)")
    parser.add_argument("--daemons", type=int, default=0, metavar="N",
                        help="instead of the ladder: one daemon, then N, on one relay stream into PostgreSQL "
                             "(lossless rate and CPU per 1M events; --events sets the events)")
    args = parser.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",") if r.strip()]
    args.rss_rates = [int(r) for r in args.rss_rates.split(",") if r.strip()]
    args.consumers = [c.strip() for c in args.consumers.split(",") if c.strip()]
    shapes = [m.strip() for m in args.sustained_messages.split(",") if m.strip()]
    if not shapes or set(shapes) - {"multi", "single"}:
        parser.error("--sustained-messages takes multi, single or both")
    args.sustained_messages = [m == "single" for m in shapes]
    unknown = set(args.consumers) - set(ALL_CONSUMERS)
    if unknown:
        parser.error(f"unknown consumers: {', '.join(sorted(unknown))}")
    return args


def make_consumers(keys: list[str], workdir: Path, broker_url: str, postgres_url: str,
                   taskmon_args: str = "") -> list[cons.Consumer]:
    out: list[cons.Consumer] = []
    cons.Taskmon.extra_args = tuple(shlex.split(taskmon_args))
    for key in keys:
        if key == "taskmon-sqlite":
            out.append(cons.TaskmonSQLite(workdir, broker_url))
        elif key == "taskmon-postgres":
            out.append(cons.TaskmonPostgres(workdir, broker_url, postgres_url))
        elif key in ("celery-bare", "celery-state"):
            out.append(cons.CeleryReceiver(workdir, broker_url, key.split("-", 1)[1]))
        elif key == "flower":
            out.append(cons.Flower(workdir, broker_url, cons.free_port()))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.daemons:
        return daemons_main(args, argv)
    started = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    print(f"bench/ingest: {started:%Y-%m-%d %H:%M:%S} UTC, load average before: "
          f"{' '.join(f'{x:.2f}' for x in load_before)}", flush=True)
    if load_before[0] > 0.5:
        print(f"WARNING: the machine is busy (1-min load {load_before[0]:.2f} on {os.cpu_count()} cores); "
              f"figures may be low", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="taskmon-bench-"))
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    gen = GeneratorProcess(server.url)
    steps: list[Step] = []
    rss: list[dict] = []
    try:
        facts = machine_facts(client, args.postgres if "taskmon-postgres" in args.consumers else None)
        if args.pubsub_limit:
            client.config_set("client-output-buffer-limit", f"pubsub {args.pubsub_limit}")
        facts["redis_pubsub_limit"] = client.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
        consumers = make_consumers(args.consumers, workdir, server.url, args.postgres, args.taskmon_args)
        for index, rate in enumerate(args.rates):
            plan = gen.build(args.events, rate, seed=index + 1)
            print(f"\n== {rate:,} events/s: {plan['events']:,} events, {len(plan['expected']):,} tasks, "
                  f"{plan['messages']:,} messages ({plan['multi_messages']:,} task.multi), "
                  f"{plan['payload_bytes'] / 1e6:.0f} MB, built in {plan['build_seconds']} s", flush=True)
            if index == 0:
                wait_unsubscribed(client)
                ceiling = gen.publish(0, max_seconds=120)
                facts["generator_unpaced_events_per_s"] = round(ceiling["achieved_rate"])
                print(f"  generator ceiling (unpaced, nobody subscribed): {ceiling['achieved_rate']:,.0f} events/s",
                      flush=True)
            for consumer in consumers:
                step = run_step(consumer, gen, plan, rate, server, client, args)
                steps.append(step)
                print(f"  {step.label:<38} achieved {step.achieved_rate:>9,.0f}/s  final ok "
                      f"{step.delivered_pct:7.2f}%  drain {step.drain_seconds if step.drain_seconds is not None else 'never'}"
                      f"  cut={'yes' if step.subscriber_cut or step.redis_cutoffs else 'no'}"
                      f"  peak RSS {step.peak_rss_mb} MB" + (f"  [{'; '.join(step.notes)}]" if step.notes else ""),
                      flush=True)
            del plan
        sustained = [c for c in consumers if isinstance(c, cons.Taskmon)] or [cons.TaskmonSQLite(workdir, server.url)]
        sustained_steps = [(rate, single) for rate in (args.rss_rates if args.rss_events else [])
                           for single in args.sustained_messages]
        for index, (rate, single) in enumerate(sustained_steps):
            kind = "one event per message" if single else "task.multi"
            plan = gen.build(args.rss_events, rate, seed=999 + index // len(args.sustained_messages), single=single)
            for consumer in sustained:
                print(f"\n== {consumer.label}, {args.rss_events:,} events at {rate:,}/s, {kind} "
                      "(sustained; RSS)", flush=True)
                one = rss_run(consumer, gen, plan, rate, server, client, args)
                one["messages"] = kind
                one["message_count"] = plan["messages"]
                rss.append(one)
                print(f"  final ok {one['delivered']:,}/{one['tasks']:,}, drain {one['drain_seconds']}, "
                      f"VmRSS {one['rss_mb']} MB ({one['idle_rss_mb']} MB {args.rss_idle:g} s later), "
                      f"VmHWM {one['peak_rss_mb']} MB, CPU {one['cpu_per_million']} s per 1M events", flush=True)
            del plan
    finally:
        gen.close()
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()
    facts["load_before"] = " ".join(f"{x:.2f}" for x in load_before)
    facts["load_after"] = " ".join(f"{x:.2f}" for x in load_after)
    finished = datetime.now(timezone.utc)
    facts["duration_min"] = round((finished - started).total_seconds() / 60, 1)

    command = "python bench/ingest/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = [
        "", f"## bench/ingest results ({started:%Y-%m-%d %H:%M} UTC)", "",
        f"Command: `{command.strip()}`", "",
        f"{args.events:,} events per consumer per rate; a cell is the share of tasks whose final state "
        "(SUCCESS/FAILURE) reached the store (taskmon) or the consumer's memory (peers); '(cut)' = Redis "
        "disconnected the subscriber.", "",
        tables(steps, args.rates, args.consumers, args.kept_up_drain), "",
        details(steps), "",
    ]
    if rss:
        report += [f"taskmon, sustained: {args.rss_events:,} events at each rate, RSS (daemon + helper) read from "
                   "/proc once drained (or given up on); CPU s per 1M events of daemon + helper (+ PostgreSQL's "
                   "backends serving its database):", ""]
    for one in rss:
        cpu = one["cpu_per_million"]
        report += [f"{one['label']} after {one['events']:,} events ({one['messages']}, {one['message_count']:,} "
                   f"messages) at {one['rate']:,}/s (achieved "
                   f"{one['achieved_rate']:,.0f}/s): VmRSS {one['rss_mb']} MB when drained, {one['idle_rss_mb']} MB "
                   f"{one['idle_seconds']:g} s later, VmHWM (peak) {one['peak_rss_mb']} MB; "
                   f"final ok {one['delivered']:,}/{one['tasks']:,} tasks, CPU {cpu} s per 1M events"
                   + (f" ({one['cpu_s']:.1f} s daemon + {one['server_cpu_s']:.1f} s server)"
                      if one["server_cpu_s"] is not None else f" ({one['cpu_s']:.1f} s daemon)")
                   + f", generator / Redis {others(one)} CPU s"
                   + (f", drained {one['drain_seconds']} s after the last event" if one['drain_seconds'] is not None
                      else ", never drained")
                   + (f"; {'; '.join(one['notes'])}" if one['notes'] else "")]
    if rss:
        report.append("")
    report += ["Machine:", facts_text(facts)]
    print("\n".join(report), flush=True)

    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"ingest-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": command.strip(), "started": started.isoformat(), "finished": finished.isoformat(),
        "machine": facts, "events_per_step": args.events, "rates": args.rates,
        "steps": [dict(asdict(s), delivered_pct=round(s.delivered_pct, 3), cpu_per_million=s.cpu_per_million())
                  for s in steps],
        "rss": rss,
    }, indent=2))
    print(f"\nJSON: {out}")
    return 0


def daemons_main(args: argparse.Namespace, argv: list[str] | None) -> int:
    """--daemons N: several daemons sharing the relay stream's consumer group (bench/ingest/daemons.py)."""
    import daemons

    started = datetime.now(timezone.utc)
    workdir = Path(tempfile.mkdtemp(prefix="taskmon-bench-"))
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    print(f"bench/ingest --daemons {args.daemons}: {started:%Y-%m-%d %H:%M:%S} UTC, load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    try:
        facts = machine_facts(client, args.postgres)
        runs = daemons.run_daemons(args.daemons, args.events, server.url, args.postgres, workdir,
                                   timeout=args.drain_timeout)
    finally:
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)
    facts["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    command = "python bench/ingest/run.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print("\n".join(["", f"## bench/ingest --daemons ({started:%Y-%m-%d %H:%M} UTC)", "",
                     f"Command: `{command.strip()}`", "", daemons.table(runs), "", "Machine:", facts_text(facts)]))
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"ingest-daemons-{started:%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"command": command.strip(), "started": started.isoformat(), "machine": facts,
                               "runs": daemons.as_json(runs)}, indent=2))
    print(f"\nJSON: {out}")
    return 0 if all(r.lossless for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
