"""Publish real kombu-format Celery event messages to a local Redis at a fixed rate.

Every task gets a full lifecycle: ``task-sent`` (one message, as a client sends it), then
``task-received``, ``task-started`` and ``task-succeeded`` or (about 10%) ``task-failed`` with an
exception and traceback, which the worker sends buffered in ``task.multi`` messages of 1-10
events, as prefork workers do. Workers also send ``worker-heartbeat`` every 2 s of simulated time.

All messages are built and packed as RESP ``PUBLISH`` commands before the timed phase; the
timed phase only writes pre-built bytes to the socket on a schedule (a pipeline: replies are
read as they come, never waited for one by one), so the generator is not what limits the rate.
Each PUBLISH reply is the number of subscribers that got the message; a 0 means the consumer
was not subscribed at that moment (e.g. Redis had cut it off).

    python bench/ingest/generator.py --redis redis://127.0.0.1:PORT/0 --rate 30000 --events 300000

Stops by itself: after ``--events`` (or ``--duration`` x ``--rate``) events, or ``--max-seconds``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import hiredis
import orjson

from monitor.sources import encode_kombu_message

LOCAL_HOSTS = {"127.0.0.1", "localhost"}
HEARTBEAT_EVERY = 2.0  # celery's default worker heartbeat interval (seconds)
FAIL_RATIO = 0.10
SECRET_RATIO = 0.05  # tasks whose kwargs carry a secret-named key (taskmon redacts them)

TASK_NAMES = [
    "shop.tasks.send_order_confirmation", "shop.tasks.reserve_stock", "shop.tasks.update_search_index",
    "billing.tasks.charge_invoice", "billing.tasks.refund_payment", "billing.tasks.generate_pdf_invoice",
    "notifications.tasks.send_push", "notifications.tasks.send_email", "notifications.tasks.send_sms",
    "reports.tasks.build_daily_report", "imports.tasks.import_csv_chunk", "imports.tasks.geocode_address",
    "media.tasks.resize_image", "media.tasks.transcode_preview", "accounts.tasks.sync_crm_contact",
    "accounts.tasks.expire_sessions", "analytics.tasks.track_event", "analytics.tasks.aggregate_hourly",
]
QUEUES = ["celery", "default", "emails", "billing", "media"]
EXCEPTIONS = [
    ("ValueError", "invalid literal for int() with base 10: 'N/A'"),
    ("KeyError", "'customer_id'"),
    ("requests.exceptions.ConnectionError", "HTTPSConnectionPool(host='api.payments.example.com', port=443): "
                                            "Max retries exceeded with url: /v1/charges"),
    ("TimeoutError", "operation timed out after 30.0 seconds"),
    ("django.db.utils.OperationalError", "could not serialize access due to concurrent update"),
]
TRACEBACK_FRAMES = [
    ("/usr/local/lib/python3.11/site-packages/celery/app/trace.py", 453, "trace_task", "R = retval = fun(*args, **kwargs)"),
    ("/usr/local/lib/python3.11/site-packages/celery/app/trace.py", 736, "__protected_call__", "return self.run(*args, **kwargs)"),
    ("/srv/app/{module}/tasks.py", 88, "{func}", "result = service.process(payload, retries=self.request.retries)"),
    ("/srv/app/{module}/services.py", 214, "process", "record = self._load(payload['customer_id'])"),
    ("/srv/app/{module}/services.py", 97, "_load", "return Customer.objects.select_for_update().get(pk=pk)"),
    ("/usr/local/lib/python3.11/site-packages/django/db/models/query.py", 633, "get", "num = len(clone)"),
]


def traceback_text(name: str, exc_type: str, message: str) -> str:
    module, func = name.split(".")[0], name.rsplit(".", 1)[1]
    lines = ["Traceback (most recent call last):"]
    for path, line, fn, code in TRACEBACK_FRAMES:
        lines.append(f'  File "{path.format(module=module)}", line {line}, in {fn.format(func=func)}')
        lines.append(f"    {code}")
    lines.append(f"{exc_type}: {message}")
    return "\n".join(lines) + "\n"


def random_args(rng: random.Random) -> tuple[str, str]:
    """argsrepr/kwargsrepr as celery puts them in events (saferepr of the call's arguments)."""
    shape = rng.random()
    if shape < 0.4:
        args = repr((rng.randrange(1, 10_000_000), str(uuid.UUID(int=rng.getrandbits(128)))))
    elif shape < 0.8:
        items = [{"sku": f"SKU-{rng.randrange(100000):05d}", "qty": rng.randrange(1, 9),
                  "price": round(rng.uniform(1, 500), 2)} for _ in range(rng.randrange(1, 6))]
        args = repr((rng.randrange(1, 10_000_000), items))
    else:
        args = repr((f"s3://uploads-prod/{uuid.UUID(int=rng.getrandbits(128))}/chunk-{rng.randrange(500):04d}.csv",
                     rng.randrange(0, 50_000), 1000))
    kwargs = {"request_id": str(uuid.UUID(int=rng.getrandbits(128))), "priority": rng.randrange(0, 10),
              "source": rng.choice(["api", "web", "cron", "admin", "webhook"])}
    if rng.random() < 0.5:
        kwargs["locale"] = rng.choice(["en_US", "de_DE", "fr_FR", "zh_CN", "pt_BR"])
    if rng.random() < SECRET_RATIO:
        kwargs["api_token"] = "tok_" + uuid.UUID(int=rng.getrandbits(128)).hex
    return args, repr(kwargs)


@dataclass
class Plan:
    commands: list[bytes]  # packed RESP PUBLISH commands, in publishing order
    events: list[int]  # events carried by each command
    expected: dict[str, str] = field(default_factory=dict)  # task id -> final state
    n_events: int = 0
    n_heartbeats: int = 0
    n_multi: int = 0
    n_single: int = 0
    n_bytes: int = 0


def pack_publish(channel: bytes, payload: bytes) -> bytes:
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(channel), channel, len(payload), payload)


def build_plan(n_events: int, rate: float, *, db: int = 0, workers: int = 8, seed: int = 0,
               single: bool = False) -> Plan:
    """About ``n_events`` events (4 per task, plus heartbeats) on a simulated clock at ``rate``/s.

    ``single``: every worker event in a message of its own (task.received, ...), as a worker
    without prefork's buffering sends them, instead of task.multi messages of 1-10.
    """
    rng = random.Random(seed)
    t0 = time.time()
    duration = n_events / rate
    worker_names = [f"celery@worker-{i + 1}.prod.internal" for i in range(workers)]
    n_heartbeats = workers * int(duration // HEARTBEAT_EVERY)
    n_tasks = max((n_events - n_heartbeats) // 4, 1)
    step = duration / n_tasks
    clients = [(f"gunicorn@web-{i + 1}.prod.internal", 1000 + i) for i in range(6)]
    clocks: dict[str, int] = {}

    def base(kind: str, hostname: str, pid: int, ts: float) -> dict:
        clocks[hostname] = clocks.get(hostname, 0) + 1
        return {"hostname": hostname, "utcoffset": 0, "pid": pid, "clock": clocks[hostname], "timestamp": ts,
                "type": kind}

    # (publish time, routing key, sender hostname, body) per message; worker events go through a per-worker buffer.
    messages: list[tuple[float, str, str, object, int]] = []
    worker_streams: dict[str, list[tuple[float, dict]]] = {w: [] for w in worker_names}
    expected: dict[str, str] = {}
    for i in range(n_tasks):
        t = t0 + i * step
        task_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        name = rng.choice(TASK_NAMES)
        queue = rng.choice(QUEUES)
        args, kwargs = random_args(rng)
        client, client_pid = rng.choice(clients)
        sent = base("task-sent", client, client_pid, t)
        sent.update(uuid=task_id, root_id=task_id, parent_id=None, name=name, args=args, kwargs=kwargs, retries=0,
                    eta=None, expires=None, queue=queue, exchange="", routing_key=queue)
        messages.append((t, "task.sent", client, sent, 1))
        worker = rng.choice(worker_names)
        child_pid = 20000 + rng.randrange(64)
        t_recv = t + rng.uniform(0.001, 0.02)
        t_start = t_recv + rng.uniform(0.0, 0.05)
        t_end = t_start + rng.uniform(0.005, 0.5)
        received = base("task-received", worker, 7, t_recv)
        received.update(uuid=task_id, name=name, args=args, kwargs=kwargs, root_id=task_id, parent_id=None,
                        retries=0, eta=None, expires=None)
        started = base("task-started", worker, 7, t_start)
        started.update(uuid=task_id, pid=child_pid)
        if rng.random() < FAIL_RATIO:
            exc_type, message = rng.choice(EXCEPTIONS)
            short = exc_type.rsplit(".", 1)[-1]
            end = base("task-failed", worker, 7, t_end)
            end.update(uuid=task_id, exception=f"{short}({message!r})",
                       traceback=traceback_text(name, exc_type, message))
            expected[task_id] = "FAILURE"
        else:
            end = base("task-succeeded", worker, 7, t_end)
            result = rng.choice([repr(None), repr(True), repr({"status": "ok", "count": rng.randrange(100)}),
                                 repr(f"processed {rng.randrange(10_000)} rows")])
            end.update(uuid=task_id, result=result, runtime=round(t_end - t_start, 6))
            expected[task_id] = "SUCCESS"
        stream = worker_streams[worker]
        stream.extend(((t_recv, received), (t_start, started), (t_end, end)))

    for worker, stream in worker_streams.items():
        stream.sort(key=lambda pair: pair[0])
        j = 0
        while j < len(stream):
            if single:
                at, ev = stream[j]
                messages.append((at, ev["type"].replace("-", "."), worker, ev, 1))
                j += 1
                continue
            size = rng.randint(1, 10)
            chunk = stream[j:j + size]
            j += size
            # The worker flushes its buffer once the last event of the chunk happened.
            messages.append((chunk[-1][0], "task.multi", worker, [ev for _, ev in chunk], len(chunk)))
        beat = t0 + rng.uniform(0, HEARTBEAT_EVERY)
        processed = 0
        while beat < t0 + duration:
            ev = base("worker-heartbeat", worker, 7, beat)
            processed += rng.randrange(20, 200)
            ev.update(freq=HEARTBEAT_EVERY, sw_ident="py-celery", sw_ver="5.4.0", sw_sys="Linux",
                      active=rng.randrange(0, 9), processed=processed,
                      loadavg=[round(rng.uniform(0, 4), 2) for _ in range(3)])
            messages.append((beat, "worker.heartbeat", worker, ev, 1))
            beat += HEARTBEAT_EVERY

    messages.sort(key=lambda m: m[0])
    prefix = f"/{db}.celeryev/".encode()
    plan = Plan(commands=[], events=[], expected=expected)
    for _, key, sender, body, count in messages:
        payload = encode_kombu_message(orjson.dumps(body), key, hostname=sender)
        plan.commands.append(pack_publish(prefix + key.encode(), payload))
        plan.events.append(count)
        plan.n_events += count
        plan.n_bytes += len(payload)
        if key == "task.multi":
            plan.n_multi += 1
        else:
            plan.n_single += 1
        if key == "worker.heartbeat":
            plan.n_heartbeats += 1
    return plan


@dataclass
class Published:
    target_rate: float
    events: int
    messages: int
    seconds: float
    achieved_rate: float
    replies: int
    zero_receivers: int  # PUBLISH replies of 0: nobody was subscribed when the message went out
    stopped_early: bool


def local_address(redis_url: str) -> tuple[str, int]:
    parts = urlsplit(redis_url)
    if parts.scheme != "redis" or parts.hostname not in LOCAL_HOSTS:
        raise SystemExit(f"the generator only publishes to a local Redis (redis://127.0.0.1:PORT), not {redis_url!r}")
    return "127.0.0.1", parts.port or 6379


class ReplyCounter:
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.replies = 0
        self.zero = 0

    def feed(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"Redis refused a PUBLISH: {reply}")
            self.replies += 1
            if reply == 0:
                self.zero += 1

    def drain(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(1 << 16, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                raise ConnectionError("Redis closed the publisher connection")
            self.feed(data)


def publish(redis_url: str, plan: Plan, rate: float, *, max_seconds: float, tick: float = 0.001) -> Published:
    """Send the plan's commands so that events go out at ``rate``/s (0: as fast as possible)."""
    host, port = local_address(redis_url)
    # Pre-join the commands into chunks of about one tick's worth of events.
    per_chunk = max(1, int(rate * tick)) if rate > 0 else 200
    chunks: list[bytes] = []
    due: list[int] = []  # cumulative events after each chunk
    current: list[bytes] = []
    in_chunk = total = 0
    for cmd, n in zip(plan.commands, plan.events):
        current.append(cmd)
        in_chunk += n
        total += n
        if in_chunk >= per_chunk:
            chunks.append(b"".join(current))
            due.append(total)
            current, in_chunk = [], 0
    if current:
        chunks.append(b"".join(current))
        due.append(total)

    counter = ReplyCounter()
    stopped_early = False
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Blocking mode: with a timeout set, recv(MSG_DONTWAIT) would wait for the timeout.
        sock.settimeout(None)
        sent_events = 0
        start = time.perf_counter()
        deadline = start + max_seconds
        i = 0
        while i < len(chunks):
            now = time.perf_counter()
            if now > deadline:
                stopped_early = True
                break
            if rate > 0:
                # Everything that is due by now goes out in one write; then sleep until the next chunk.
                allowed = (now - start) * rate
                j = i
                while j < len(chunks) and (due[j - 1] if j else 0) <= allowed:
                    j += 1
                if j == i:
                    counter.drain(sock)
                    wait = (due[i - 1] if i else 0) / rate - (time.perf_counter() - start)
                    if wait > 0:
                        time.sleep(min(wait, tick))
                    continue
            else:
                j = min(i + 50, len(chunks))
            sock.sendall(b"".join(chunks[i:j]) if j - i > 1 else chunks[i])
            sent_events = due[j - 1]
            i = j
            counter.drain(sock)
        expected_replies = _commands_in(plan, sent_events)
        sock.settimeout(30)
        while counter.replies < expected_replies:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError("Redis closed the publisher connection")
            counter.feed(data)
        # Up to the last reply: Redis has handed every message to the subscribers' buffers.
        elapsed = time.perf_counter() - start
    return Published(target_rate=rate, events=sent_events, messages=expected_replies, seconds=round(elapsed, 3),
                     achieved_rate=round(sent_events / elapsed, 1) if elapsed > 0 else 0.0,
                     replies=counter.replies, zero_receivers=counter.zero, stopped_early=stopped_early)


def _commands_in(plan: Plan, events: int) -> int:
    total = 0
    for n, count in enumerate(plan.events, 1):
        total += count
        if total >= events:
            return n
    return len(plan.events)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", required=True, help="redis://127.0.0.1:PORT/DB (local only)")
    parser.add_argument("--rate", type=float, required=True, help="target events per second (0: unpaced)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--events", type=int, help="number of events to publish")
    group.add_argument("--duration", type=float, help="seconds to publish for (events = rate x duration)")
    parser.add_argument("--workers", type=int, default=8, help="simulated worker hosts")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: from the pid and time)")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="hard stop for the timed phase (default: 3x the planned duration + 10 s)")
    parser.add_argument("--manifest", help="write 'task_id STATE' lines (the expected final states) here")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)

    if args.events is None:
        if args.rate <= 0:
            parser.error("--duration needs a --rate above 0")
        args.events = int(args.rate * args.duration)
    if args.events <= 0:
        parser.error("nothing to publish")
    local_address(args.redis)
    db = int(urlsplit(args.redis).path.strip("/") or 0)
    seed = args.seed if args.seed is not None else (os.getpid() << 20) ^ time.time_ns()
    t_build = time.perf_counter()
    plan = build_plan(args.events, args.rate if args.rate > 0 else 50_000, db=db, workers=args.workers, seed=seed)
    build_seconds = time.perf_counter() - t_build
    if args.manifest:
        with open(args.manifest, "w") as fh:
            fh.writelines(f"{task_id} {state}\n" for task_id, state in plan.expected.items())
    planned = plan.n_events / args.rate if args.rate > 0 else 60.0
    max_seconds = args.max_seconds if args.max_seconds is not None else 3 * planned + 10
    result = publish(args.redis, plan, args.rate, max_seconds=max_seconds)
    report = {
        **result.__dict__,
        "planned_events": plan.n_events,
        "tasks": len(plan.expected),
        "failures": sum(1 for s in plan.expected.values() if s == "FAILURE"),
        "heartbeats": plan.n_heartbeats,
        "multi_messages": plan.n_multi,
        "single_messages": plan.n_single,
        "payload_bytes": plan.n_bytes,
        "build_seconds": round(build_seconds, 2),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"published {result.events} events in {result.messages} messages "
              f"({plan.n_multi} task.multi, {plan.n_single} single; {plan.n_bytes / 1e6:.1f} MB) in {result.seconds:.2f} s: "
              f"{result.achieved_rate:,.0f} events/s (target {args.rate:,.0f}); "
              f"{result.zero_receivers} messages had no subscriber; built in {build_seconds:.1f} s")
    return 1 if result.stopped_early else 0


if __name__ == "__main__":
    sys.exit(main())
