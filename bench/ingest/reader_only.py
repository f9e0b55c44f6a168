"""taskmon's pub/sub reader alone: CPU of its thread per message, against a real Redis at a real rate.

The reader thread (monitor.sources.redis_pubsub) reads the socket, parses the replies, decodes
each kombu message and hands the events to the buffer; here a thread empties the buffer and
drops what it takes, so the figure is the reader's own (its thread's CPU clock), beside the
celery EventReceiver's cost of the same messages in bench/ingest/run.py.

    python bench/ingest/reader_only.py --events 400000 --rate 40000 --single --rounds 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

from run import GeneratorProcess, wait_subscribed  # noqa: E402

import redis  # noqa: E402

from monitor.ingest.buffer import EventBuffer  # noqa: E402
from monitor.redis_server import RedisServer  # noqa: E402
from monitor.sources.redis_pubsub import RedisPubSubSource  # noqa: E402


class _Subscriber:  # what wait_subscribed asks of a consumer
    label = "taskmon reader"

    def alive(self) -> bool:
        return True


def one_round(server: RedisServer, gen: GeneratorProcess, plan: dict, rate: float) -> dict:
    buffer = EventBuffer(max_events=10_000_000)
    source = RedisPubSubSource(buffer, server.url)
    taken = {"events": 0}
    done = threading.Event()

    def drain() -> None:
        while not done.is_set() or len(buffer):
            taken["events"] += buffer.take(100_000, 0.05).events

    drainer = threading.Thread(target=drain, daemon=True)
    drainer.start()
    source.start()
    client = redis.Redis.from_url(server.url)
    wait_subscribed(client, _Subscriber())
    time.sleep(0.5)
    clock = time.pthread_getcpuclockid(source.ident)
    cpu0 = time.clock_gettime(clock)
    published = gen.publish(rate, max_seconds=3 * plan["events"] / rate + 10)
    deadline = time.monotonic() + 30
    while source.counters.get("messages_received") < published["messages"] and time.monotonic() < deadline:
        time.sleep(0.05)
    cpu = time.clock_gettime(clock) - cpu0
    source.stopping.set()
    source.join(5)
    done.set()
    drainer.join(5)
    messages = source.counters.get("messages_received")
    return {"messages": messages, "published": published["messages"], "events": source.counters.get("events_received"),
            "achieved_rate": published["achieved_rate"], "cpu_s": cpu, "us_per_message": cpu / max(messages, 1) * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--rate", type=float, default=40_000)
    parser.add_argument("--single", action="store_true", help="one event per message (default: task.multi)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    server = RedisServer().start()
    gen = GeneratorProcess(server.url)
    try:
        plan = gen.build(args.events, args.rate, seed=3, single=args.single)
        results = []
        for i in range(args.rounds):
            r = one_round(server, gen, plan, args.rate)
            results.append(r)
            print(f"round {i + 1}: {r['messages']:,}/{r['published']:,} messages ({r['events']:,} events) at "
                  f"{r['achieved_rate']:,.0f} events/s: reader thread {r['cpu_s']:.2f} CPU s, "
                  f"{r['us_per_message']:.2f} us per message")
        print(f"median: {statistics.median(r['us_per_message'] for r in results):.2f} us per message "
              f"({'one event per message' if args.single else 'task.multi'}, {args.rate:,.0f} events/s)")
    finally:
        gen.close()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
