"""Events -> merged rows -> the upsert's parameters: the writer's Python work, in a helper process.

At tens of thousands of events a second this work (validation, redaction, merging, parameter
building: ~20 us an event) is more than one interpreter can do beside the pub/sub reader, which
must never fall behind or Redis drops it. So the writer hands each batch to a helper process
(``Preparer``) and commits the previous batch while the helper works on the next: the reader,
the helper and the database each get a core's share instead of one GIL between them.

The helper computes exactly what ``prepare_batch`` computes in the writer thread (the writer falls
back to that when there is no helper, or when the helper died); tests compare the two.
"""
from __future__ import annotations

import io
import logging
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable

import orjson

from monitor.ingest.counters import Counters
from monitor.ingest.events import Malformed, to_update
from monitor.ingest.memory import release_free_memory, tune_allocator
from monitor.ingest.state import Pending
from storage.params import RowPlan, pack_rows

log = logging.getLogger(__name__)


@dataclass
class Ready:
    """A batch's events as the writer commits them: task_runs parameters (key order, pickled in
    chunks: see storage.runs.PreparedRuns), worker rows, and what could not be used, by reason."""

    chunks: list[bytes]
    rows: int
    workers: list[dict]
    malformed: dict[str, int] = field(default_factory=dict)


def merge_events(pieces: Iterable[bytes | list], field_max_bytes: int, malformed: Counter) -> Pending:
    """Validate and merge events per task and worker; count the unusable ones in ``malformed``.

    ``pieces``: event lists, or orjson arrays of events (``Batch.piece``, or a view of one), decoded one at a time so
    that only one read's events are dicts at once; the merged rows are what stays.
    """
    pending = Pending()
    redacted: dict[str, str] = {}
    for piece in pieces:
        for event in orjson.loads(piece) if isinstance(piece, (bytes, memoryview)) else piece:
            try:
                pending.add(to_update(event, field_max_bytes, redacted))
            except Malformed as exc:
                malformed[f"malformed.{exc.reason}"] += 1
            except (TypeError, ValueError, OverflowError) as exc:  # a shape to_update did not foresee
                log.warning("skipping event that failed conversion: %s", exc)
                malformed["malformed.bad_field_type"] += 1
    return pending


def prepare_batch(plan: RowPlan, pieces: Iterable[bytes | list], field_max_bytes: int) -> Ready:
    malformed: Counter = Counter()
    pending = merge_events(pieces, field_max_bytes, malformed)
    # Key order: the detector sweep locks rows in the same order, so PostgreSQL never deadlocks.
    tasks = [pending.tasks[k] for k in sorted(pending.tasks)]
    workers = [pending.workers[k] for k in sorted(pending.workers)]
    del pending
    return Ready(pack_rows(plan, tasks, packed=True), len(tasks), workers, dict(malformed))


# Helpers that die one after another (no memory to start one, say): stop starting them.
GIVE_UP_AFTER = 5
# Idle after a burst, a helper whose RSS passed this is replaced by a fresh one: what its heap kept
# of the burst's batches (a 1,000,000-event burst left it at ~37 MB, against ~21 MB when new) is
# given back, which no trim does. Under a steady load it stays below, and is never replaced.
RENEW_RSS_BYTES = 28 * 2**20

# -- the helper process ---------------------------------------------------------------------------
# A plain subprocess fed over its stdin and answering on its stdout, in frames: an 8-byte length,
# then that many bytes. It imports this module and what it needs, not SQLAlchemy (storage.params).
# multiprocessing's pool was first used: its resource tracker process (13 MB) and the pickled copy
# of each batch its feeder thread holds until the helper takes it (~20 MB) were memory spent on
# nothing; here a batch's pieces are written to the pipe as they are.
#
# A batch's frame: a pickled list of (kind, length), then the pieces back to back (kind 0: an
# orjson array, read in the helper as a view of the frame; 1: a list of events, pickled).
# The answer: ("ok", Ready) or ("error", traceback), pickled. The first frame: (plan, field_max_bytes).

_LENGTH = struct.Struct("!Q")
HELPER_CODE = "from monitor.ingest.prepare import helper_main; helper_main()"
ROOT = str(Path(__file__).resolve().parent.parent)  # where the monitor and storage packages are


def _read_frame(src: BinaryIO) -> bytearray | None:
    """The next frame, or None at the end of the stream (the other side closed it or died)."""
    size = _read_exact(src, _LENGTH.size)
    if size is None:
        return None
    return _read_exact(src, _LENGTH.unpack(size)[0])


def _read_exact(src: BinaryIO, n: int) -> bytearray | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = src.readinto(view[got:])
        if not k:
            return None
        got += k
    return buf


def helper_main() -> None:
    """The helper process: prepare each batch that arrives, answer in order, exit when the input ends."""
    # Ctrl-C in a terminal signals the whole process group: the daemon stops and flushes, and
    # needs its helper until the last batch is prepared. The daemon closes our input to stop us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    tune_allocator()
    src = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")  # the answers; what anything else prints goes to stderr
    os.dup2(2, 1)
    threading.Thread(target=_housekeeping, args=(os.getppid(),), name="taskmon-helper-housekeeping",
                     daemon=True).start()
    first = _read_frame(src)
    if first is None:
        return
    plan, field_max_bytes = pickle.loads(first)
    while (header := _read_frame(src)) is not None:
        kinds = pickle.loads(header)
        data = _read_exact(src, sum(n for _, n in kinds))
        if data is None:
            return
        view, at, pieces = memoryview(data), 0, []
        for kind, n in kinds:
            pieces.append(view[at:at + n] if kind == 0 else pickle.loads(view[at:at + n]))
            at += n
        try:
            answer = ("ok", prepare_batch(plan, pieces, field_max_bytes))
        except Exception:  # a bug: the daemon logs it and prepares the batch itself
            answer = ("error", traceback.format_exc())
        del pieces, view, data
        blob = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
        del answer
        out.write(_LENGTH.pack(len(blob)))
        out.write(blob)
        out.flush()
        del blob
        release_free_memory()


def _housekeeping(daemon_pid: int) -> None:
    """Every second: give a batch's garbage back (see monitor.ingest.memory), and exit if the daemon is gone
    (a daemon killed with -9 closes our input too; this also covers a helper stuck writing)."""
    while True:
        time.sleep(1.0)
        if os.getppid() != daemon_pid:
            os._exit(0)
        release_free_memory()


class _Helper:
    """One helper process and the batches it has in hand; it answers them in the order sent."""

    def __init__(self, plan: RowPlan, field_max_bytes: int):
        path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
        self.proc = subprocess.Popen([sys.executable, "-c", HELPER_CODE], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0, env=dict(os.environ, PYTHONPATH=path))
        self.sent = 0  # batches handed to the sender thread
        self.answers: dict[int, tuple] = {}  # by batch number, until taken
        self.read = 0  # answers read
        self.dead = False  # the helper's output ended: it died (or was closed)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._outbox.put(pickle.dumps((plan, field_max_bytes)))
        self._sender = threading.Thread(target=self._send, name="taskmon-helper-sender", daemon=True)
        self._sender.start()

    def submit(self, pieces: list) -> int:
        """Queue a batch for the helper (a thread writes it, so that a busy helper never blocks us)."""
        self._outbox.put(pieces)
        self.sent += 1
        return self.sent - 1

    def _send(self) -> None:
        out = io.BufferedWriter(self.proc.stdin, buffer_size=1 << 20)
        try:
            first = self._outbox.get()
            out.write(_LENGTH.pack(len(first)))
            out.write(first)
            out.flush()
            while (pieces := self._outbox.get()) is not None:
                parts = [piece if isinstance(piece, bytes) else pickle.dumps(piece) for piece in pieces]
                header = pickle.dumps([(0 if isinstance(piece, bytes) else 1, len(part))
                                       for piece, part in zip(pieces, parts)])
                out.write(_LENGTH.pack(len(header)))
                out.write(header)
                for part in parts:
                    out.write(part)
                out.flush()
                del pieces, parts
        except (OSError, ValueError):  # the helper died: its answers end too, and poll() sees that
            pass
        finally:
            try:
                out.close()
            except (OSError, ValueError):
                pass

    def poll(self, number: int, timeout: float | None) -> bool:
        """Whether batch ``number``'s answer is in (or will never come), reading answers for up to
        ``timeout`` seconds (None: until it is)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        stdout = self.proc.stdout
        while number not in self.answers and not self.dead:
            wait = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not select.select([stdout], [], [], wait)[0]:
                return False
            frame = _read_frame(stdout)  # once readable, the rest of the answer follows at once
            if frame is None:
                self.dead = True
                break
            self.answers[self.read] = pickle.loads(frame)
            self.read += 1
        return True

    def rss_bytes(self) -> int:
        """VmRSS of the helper process (0 when it cannot be read: gone, or not Linux)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def close(self, kill: bool = False) -> None:
        """Let the helper finish what it was sent and exit (``kill``: at once)."""
        if not kill:
            self._outbox.put(None)
            deadline = time.monotonic() + 10
            while not self.dead and time.monotonic() < deadline:  # answers not taken would block its exit
                self.poll(self.sent, deadline - time.monotonic())
            try:
                self.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                kill = True
        if kill and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.dead = True
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Job:
    """One batch being prepared; ``result()`` prepares it in this thread when there is no helper or it failed."""

    def __init__(self, preparer: "Preparer", pieces: list, helper: _Helper | None = None, number: int = -1):
        self.preparer, self.pieces, self.helper, self.number = preparer, pieces, helper, number

    def done(self, timeout: float = 0) -> bool:
        """Whether ``result()`` would return at once, waiting up to ``timeout`` seconds for it."""
        return self.helper is None or self.helper.poll(self.number, timeout)

    def result(self) -> Ready:
        if self.helper is not None:
            self.helper.poll(self.number, None)
            answer = self.helper.answers.pop(self.number, None)
            if answer is None:  # the helper died with the batch in hand, or before it got it
                self.preparer.broken(self.helper)
            elif answer[0] == "ok":
                self.preparer.failures_in_a_row = 0
                self.pieces = []  # safe in rows now: free the events before the batch commits
                return answer[1]
            else:  # a bug the helper hit: the same work here logs and counts it again
                log.error("the preparing helper failed on a batch; preparing it in the writer:\n%s", answer[1])
                self.preparer.counters.incr("prepare.helper_failures")
        return prepare_batch(self.preparer.plan, self.pieces, self.preparer.field_max_bytes)


class Preparer:
    """``processes`` helper processes, batches dealt to them in turn (0: batches are prepared in the writer)."""

    def __init__(self, plan: RowPlan, field_max_bytes: int, processes: int = 1):
        self.plan = plan  # storage.runs.row_plan(dialect)
        self.field_max_bytes = field_max_bytes
        self.processes = processes
        self.counters = Counters()  # prepare.helper_failures: crashes and errors of the helper
        self.failures_in_a_row = 0
        self._helpers: list[_Helper] = []
        self._turn = 0

    def submit(self, pieces: list) -> Job:
        """Start preparing a batch (``Batch.piece`` of each of its batches). The pieces are kept until
        the result is in: a helper that dies loses nothing."""
        helper = self._next_helper()
        if helper is None:
            return Job(self, pieces)
        return Job(self, pieces, helper, helper.submit(pieces))

    def _next_helper(self) -> _Helper | None:
        while len(self._helpers) < self.processes:
            try:
                self._helpers.append(_Helper(self.plan, self.field_max_bytes))
            except OSError as exc:
                log.error("cannot start a preparing helper (%s); the writer prepares batches itself", exc)
                self.processes = 0
        if not self._helpers or self.processes <= 0:
            return None
        self._turn += 1
        return self._helpers[self._turn % len(self._helpers)]

    def broken(self, helper: _Helper) -> None:
        """A helper died (killed, out of memory): the next batches go to a new one."""
        if helper not in self._helpers:
            return  # counted already, for an earlier batch it had in hand
        self._helpers.remove(helper)
        helper.close(kill=True)
        self.counters.incr("prepare.helper_failures")
        self.failures_in_a_row += 1
        if self.failures_in_a_row >= GIVE_UP_AFTER:
            log.error("the preparing helper died %d times in a row; the writer prepares batches itself from now on",
                      self.failures_in_a_row)
            self.processes = 0
        else:
            log.error("the preparing helper process died; starting another, this batch is prepared in the writer")

    def renew_grown(self, most: int | None = None) -> int:
        """Replace each helper whose RSS passed ``most`` bytes (RENEW_RSS_BYTES) with a new one, started
        now; the number replaced. Only when no batch is in hand (the writer calls it when idle)."""
        most = RENEW_RSS_BYTES if most is None else most
        renewed = 0
        for i, helper in enumerate(list(self._helpers)):
            if helper.sent != helper.read or helper.rss_bytes() <= most:
                continue
            helper.close()
            try:
                self._helpers[i] = _Helper(self.plan, self.field_max_bytes)
            except OSError as exc:
                self._helpers.remove(helper)  # the next submit tries again, or prepares in the writer
                log.warning("cannot start a new preparing helper (%s)", exc)
                continue
            renewed += 1
        if renewed:
            self.counters.incr("prepare.helpers_renewed", renewed)
        return renewed

    def close(self) -> None:
        for helper in self._helpers:
            helper.close()
        self._helpers = []
