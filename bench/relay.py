"""bench/relay: what the durable relay costs a task.delay(), with Redis healthy, hung and stopped.

One run, four cases, each in fresh client processes of its own (so no writer thread or
connection of one case runs during another), sending --sends (default 10,000) ``delay()`` calls
one after the other to a healthy broker Redis, with ``task_send_sent_event = True`` (without it a
client publishes no event and the relay has nothing to do). The cases take turns in --rounds
(default 5) rounds, so that the load of a shared machine falls on all of them alike:

    a. no relay
    b. relay, its Redis healthy
    c. relay, its Redis hung: SIGSTOPped, so the kernel accepts connections and bytes, and
       nothing answers (a stuck server, a full network buffer, a failover in progress)
    d. relay, its Redis stopped (connections refused)

The relay writes to a Redis of its own, so that the broker stays healthy in c and d. Both are
redis-servers the bench starts on free ports; nothing else is touched.

    python bench/relay.py
    python bench/relay.py --sends 20000 --rounds 10 --json bench/results/relay.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = [
    ("a", "no relay"),
    ("b", "relay, Redis healthy"),
    ("c", "relay, Redis hung (accepts, never answers)"),
    ("d", "relay, Redis stopped"),
]
WARMUP = 200


def client(broker_url: str, relay_url: str, sends: int) -> dict:
    """One case, in this process: the latency of each delay(), the process's CPU time (the relay's
    writer thread included), and what the relay did."""
    from celery import Celery

    from tasks.relay import install

    app = Celery("bench-relay", broker=broker_url, set_as_current=False)
    app.conf.update(task_send_sent_event=True, broker_connection_retry_on_startup=True)

    @app.task(name="bench.add")
    def add(x, y):
        return x + y

    relay = install(app, url=relay_url) if relay_url else None
    for i in range(WARMUP):
        add.delay(i, 0)
    took = []
    clock = time.perf_counter_ns
    cpu = time.process_time_ns()
    for i in range(sends):
        started = clock()
        add.delay(i, 1)
        took.append(clock() - started)
    out = {"ns": took, "cpu_ns": time.process_time_ns() - cpu}
    if relay is not None:
        out["relay"] = relay.stats()
        closing = time.monotonic()
        out["closed"] = relay.close()
        out["close_s"] = time.monotonic() - closing
    return out


def run_case(broker_url: str, relay_url: str, sends: int) -> dict:
    cmd = [sys.executable, __file__, "--client", broker_url, relay_url, str(sends)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if done.returncode != 0:
        raise SystemExit(f"client failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1e6


def measure(sends: int, rounds: int) -> tuple[dict, str]:
    """Every case ``rounds`` times, in a rotating order, so that the load of a shared machine
    falls on all of them alike; returns the pooled figures per case and the Redis version."""
    import redis

    from monitor.redis_server import RedisServer

    broker, relay_redis = RedisServer().start(), RedisServer().start()
    pooled = {key: {"ns": [], "cpu_ns": 0, "written": 0, "dropped": 0, "close_s": []} for key, _ in CASES}
    try:
        version = redis.Redis(port=broker.port).info("server")["redis_version"]
        keys = [key for key, _ in CASES]
        for r in range(rounds):
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                if key == "c":
                    os.kill(relay_redis.proc.pid, signal.SIGSTOP)
                elif key == "d":
                    relay_redis.stop()
                try:
                    result = run_case(broker.url, "" if key == "a" else relay_redis.url, sends // rounds)
                finally:
                    if key == "c":
                        os.kill(relay_redis.proc.pid, signal.SIGCONT)
                    elif key == "d":
                        relay_redis.start()
                case = pooled[key]
                case["ns"] += result["ns"]
                case["cpu_ns"] += result["cpu_ns"]
                stats = result.get("relay")
                if stats:
                    case["written"] += stats["written"]
                    case["dropped"] += stats["dropped"]
                    case["close_s"].append(result["close_s"])
            print(f"  round {r + 1} of {rounds} done", file=sys.stderr)
    finally:
        broker.close()
        relay_redis.close()
    return pooled, version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sends", type=int, default=10_000, help="delay() calls per case, over all rounds")
    parser.add_argument("--rounds", type=int, default=5, help="each case runs this many times, interleaved")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        broker_url, relay_url, sends = args.client
        print(json.dumps(client(broker_url, relay_url, int(sends))))
        return

    import celery

    started_at = datetime.now(timezone.utc)
    load_before = os.getloadavg()
    pooled, version = measure(args.sends, args.rounds)
    per_round = args.sends // args.rounds
    print(f"delay() latency, {per_round * args.rounds:,} sends per case ({args.rounds} rounds of {per_round:,} in a "
          f"fresh process, after {WARMUP} warm-up sends each), milliseconds")
    print(f"{os.cpu_count()} CPUs, python {platform.python_version()}, celery {celery.__version__}, "
          f"redis-server {version}; {started_at:%Y-%m-%dT%H:%MZ}; load {load_before[0]:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    base = pooled["a"]
    base_p50 = percentile(sorted(base["ns"]), 0.5)
    base_cpu = base["cpu_ns"] / len(base["ns"]) / 1e6
    print(f"{'case':<46} {'p50':>6} {'p99':>6} {'max':>6} {'p50-a':>6} {'cpu':>6} {'cpu-a':>6} {'relayed':>8} "
          f"{'dropped':>7} {'close':>5}")
    table = {}
    for key, label in CASES:
        case = pooled[key]
        ns = sorted(case["ns"])
        cpu = case["cpu_ns"] / len(ns) / 1e6
        row = {"p50": percentile(ns, 0.50), "p99": percentile(ns, 0.99), "max": ns[-1] / 1e6, "cpu": cpu,
               "written": case["written"], "dropped": case["dropped"],
               "close_s": max(case["close_s"]) if case["close_s"] else None}
        table[key] = row
        relay = key != "a"
        print(f"{key + '. ' + label:<46} {row['p50']:>6.3f} {row['p99']:>6.3f} {row['max']:>6.1f} "
              f"{row['p50'] - base_p50:>+6.3f} {cpu:>6.3f} {cpu - base_cpu:>+6.3f} "
              f"{format(case['written'], ',') if relay else '-':>8} {format(case['dropped'], ',') if relay else '-':>7} "
              f"{format(row['close_s'], '.1f') + 's' if relay else '-':>5}")
    print("cpu: the client process's CPU time per delay(), the relay's writer thread included; relayed: events "
          "written while the case ran; dropped: refused by a full buffer (10,000 events); close: the longest "
          "flush at exit")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"sends": args.sends, "rounds": args.rounds, "at": started_at.isoformat(),
                                         "cases": table}, indent=2))


if __name__ == "__main__":
    main()
