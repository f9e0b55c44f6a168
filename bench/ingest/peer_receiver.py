"""celery's own ``EventReceiver`` as a bench/ingest consumer, tracking per-task final state in memory.

Two modes:
- ``bare``: the handler keeps one state per task id (celery's state precedence), nothing else;
- ``state``: the handler is ``celery.events.state.State().event``, as monitors built on celery do.

It writes a small JSON status file (events seen, reconnects) twice a second so the bench can
tell when it has drained, and on SIGTERM dumps ``{task_id: state}`` to ``--dump`` and exits.
A dropped connection is reconnected at once, as Flower's capture loop does (minus its backoff).

    python bench/ingest/peer_receiver.py --broker redis://127.0.0.1:PORT/0 --mode bare --status s.json --dump d.json
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from celery import Celery, states
from celery.events.state import TASK_EVENT_TO_STATE

log = logging.getLogger("peer_receiver")


class Stop(BaseException):
    """Raised in the main thread by SIGTERM, to leave capture() wherever it is."""


def write_json(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--mode", choices=["bare", "state"], required=True)
    parser.add_argument("--status", required=True, help="JSON progress file, rewritten every 0.5 s")
    parser.add_argument("--dump", required=True, help="JSON {task_id: state} written on SIGTERM")
    parser.add_argument("--max-tasks", type=int, default=1_000_000, help="State(max_tasks_in_memory=...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    app = Celery("bench-peer", broker=args.broker)
    counts = {"events": 0, "reconnects": 0}
    if args.mode == "bare":
        final: dict[str, str] = {}
        precedence = states.precedence

        def handler(event: dict) -> None:
            counts["events"] += 1
            task_id = event.get("uuid")
            if task_id is None:
                return
            new = TASK_EVENT_TO_STATE.get(event["type"][5:])  # 'task-succeeded' -> 'succeeded'
            if new is None:
                return
            old = final.get(task_id)
            # celery.states: a lower precedence index wins (SUCCESS/FAILURE over STARTED over ...).
            if old is None or precedence(new) <= precedence(old):
                final[task_id] = new

        def snapshot() -> dict[str, str]:
            return final
    else:
        state = app.events.State(max_tasks_in_memory=args.max_tasks)

        def handler(event: dict) -> None:
            counts["events"] += 1
            state.event(event)

        def snapshot() -> dict[str, str]:
            return {task_id: task.state for task_id, task in state.tasks.items()}

    stopping = threading.Event()

    def on_term(*_):
        stopping.set()
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)

    def report() -> None:
        while not stopping.wait(0.5):
            write_json(args.status, dict(counts, subscribed=True, at=time.time()))

    threading.Thread(target=report, daemon=True).start()
    try:
        while not stopping.is_set():
            try:
                with app.connection() as conn:
                    receiver = app.events.Receiver(conn, handlers={"*": handler})
                    receiver.capture(limit=None, timeout=None, wakeup=False)
            except Stop:
                raise
            except Exception as exc:  # noqa: BLE001 - any broker error: count it and reconnect, like Flower
                counts["reconnects"] += 1
                log.warning("capture failed (%s: %s); reconnecting", type(exc).__name__, exc)
                time.sleep(0.1)
    except Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    write_json(args.dump, {"counts": counts, "tasks": snapshot()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
