"""A bounded, first-come first-served queue of model calls, shared by every thread of the process.

Many browser sessions share one model (the app holds it in st.cache_resource). Each forward pass of a
prepared model takes a slot here (hooks/gate.py): at most `slots` passes run at once, each with
`threads` torch threads, so that slots x threads does not oversubscribe the cores, and the others wait
in arrival order. A long job is many passes (one or more a prompt), so it re-enters the queue
between them: a single trace asked for meanwhile waits for one pass, not for the whole job.

A pass that calls the model again from inside (a nested call) keeps its slot. The engine's default
queue is unbounded (it only counts), so a command or a test that runs threads against each other is
never serialised; the app configures a bounded one (`configure`), SYNAPSE_MODEL_SLOTS or the CPU
count deciding its size.

>>> q = configure(slots=1, threads=2)
>>> with q.slot():
...     q.status().running
1
"""
from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from ..common.errors import BadInput

_HELD = threading.local()  # per thread: the queue whose slot it holds and how deep its calls are nested


@dataclass(frozen=True)
class QueueStatus:
    """The queue at one moment."""

    running: int  # passes holding a slot
    waiting: int  # passes waiting for one
    slots: int | None  # passes at once; None: unbounded

    @property
    def length(self) -> int:
        return self.running + self.waiting


class ModelQueue:
    """At most `slots` model calls at once (None: no bound), served in arrival order. Thread-safe."""

    def __init__(self, slots: int | None = None, threads: int | None = None):
        if slots is not None and slots < 1:
            raise BadInput(f"model call slots {slots}: give at least 1")
        if threads is not None and threads < 1:
            raise BadInput(f"torch threads per call {threads}: give at least 1")
        self.slots = slots
        self.threads = threads  # torch threads set for each call; None: left as they are
        self._cond = threading.Condition()
        self._waiting: deque[int] = deque()  # tickets in arrival order
        self._next = 0
        self._running = 0

    def enter(self) -> None:
        """Wait for a slot (in arrival order) and take it; a nested call keeps the slot it has."""
        if getattr(_HELD, "depth", 0):
            _HELD.depth += 1
            return
        with self._cond:
            ticket = self._next
            self._next += 1
            self._waiting.append(ticket)
            while self._waiting[0] != ticket or (self.slots is not None and self._running >= self.slots):
                self._cond.wait()
            self._waiting.popleft()
            self._running += 1
            self._cond.notify_all()  # the next in line may fit a free slot too
        _HELD.queue, _HELD.depth = self, 1
        if self.threads is not None:
            import torch

            torch.set_num_threads(self.threads)

    def exit(self) -> None:
        """Give the slot back once the outermost call of this thread ends; nothing when none is held."""
        depth = getattr(_HELD, "depth", 0)
        if depth == 0:
            return
        _HELD.depth = depth - 1
        if depth > 1:
            return
        queue = _HELD.queue
        _HELD.queue = None
        with queue._cond:
            queue._running -= 1
            queue._cond.notify_all()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Hold a slot for the body (what a forward pass does through the gate)."""
        self.enter()
        try:
            yield
        finally:
            self.exit()

    def status(self) -> QueueStatus:
        with self._cond:
            return QueueStatus(self._running, len(self._waiting), self.slots)


def default_slots(cpus: int | None = None) -> int:
    """One call a four cores, at least one: a forward pass of a small model uses about four threads well."""
    return max(1, (cpus or os.cpu_count() or 1) // 4)


_QUEUE = ModelQueue()
_LOCK = threading.Lock()


def model_queue() -> ModelQueue:
    """The process-wide queue every prepared model's calls go through."""
    return _QUEUE


def configure(slots: int | None = None, threads: int | None = None, cpus: int | None = None) -> ModelQueue:
    """Replace the process-wide queue with a bounded one: `slots` calls at once (default from the CPU
    count, or SYNAPSE_MODEL_SLOTS), each with `threads` torch threads (default cores // slots).
    Calls already inside keep their slot in the old queue."""
    global _QUEUE
    cpus = cpus or os.cpu_count() or 1
    if slots is None:
        env = os.environ.get("SYNAPSE_MODEL_SLOTS")
        try:
            slots = int(env) if env else default_slots(cpus)
        except ValueError:
            raise BadInput(f"SYNAPSE_MODEL_SLOTS {env!r} is not a whole number") from None
    queue = ModelQueue(slots, threads or max(1, cpus // max(1, slots)))
    with _LOCK:
        _QUEUE = queue
    return queue


def reset() -> None:
    """Back to the unbounded queue (tests)."""
    global _QUEUE
    with _LOCK:
        _QUEUE = ModelQueue()


def enter_current() -> None:
    """Take a slot in the process-wide queue (the gate's enter; the queue may have been replaced)."""
    _QUEUE.enter()


def exit_current() -> None:
    """Give back the slot this thread holds, in whichever queue it was taken."""
    _QUEUE.exit()
