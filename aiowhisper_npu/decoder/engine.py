"""The decoder engine: one thread that advances every active decoding task by one pass per iteration, all
of them in a single batched :func:`~.kernels.forward`.

A *task* is a small state machine (:class:`Task`): a generation (greedy, beam search or sampling), a
language detection or an alignment pass. Each iteration the engine asks every active task for its next
:class:`~.kernels.Pass`, runs them together (so concurrent requests and the beams of a search share every
weight read), and hands each task its output. Every active task advances once per iteration: scheduling is
round-robin by construction, and a long request cannot starve a short one.

Memory is bounded: at most ``max_tasks`` tasks and ``max_rows`` rows (beams, samples) are active; others
wait in submission order. A task's KV cache lives only while it is active and is released (``close()``)
when it finishes, fails or is cancelled, on the engine thread.

Thread contract: :meth:`DecoderEngine.submit` and :meth:`DecoderEngine.cancel` may be called from any
thread; ``done`` callbacks run on the engine thread and must not block (the runtime posts them to the
caller's event loop). No asyncio here.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol

from .kernels import Pass, PassOutput, PreparedDecoder, forward

__all__ = ["Task", "Ticket", "EngineStats", "DecoderEngine", "TaskCancelled"]

Done = Callable[[Any, BaseException | None], None]
_now = time.perf_counter


class _Twin:
    """A second thread for the engine: :meth:`run2` runs two callables at once, one on each thread (the halves
    of a large product; they release the GIL)."""

    def __init__(self, name: str):
        self._cv = threading.Condition()
        self._job: Callable[[], None] | None = None
        self._busy = False
        self._error: BaseException | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def run2(self, first: Callable[[], None], second: Callable[[], None]) -> None:
        with self._cv:
            self._job, self._busy = second, True
            self._cv.notify_all()
        try:
            first()
        finally:
            with self._cv:
                while self._busy:
                    self._cv.wait()
                error, self._error = self._error, None
        if error is not None:
            raise error

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        self._thread.join()

    def _main(self) -> None:
        while True:
            with self._cv:
                while self._job is None and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                job, self._job = self._job, None
            assert job is not None
            error = None
            try:
                job()
            except BaseException as exc:  # handed back to run2's caller
                error = exc
            with self._cv:
                self._error, self._busy = error, False
                self._cv.notify_all()


class TaskCancelled(Exception):
    """Delivered to a cancelled task's ``done`` callback once the engine has released it."""


class Task(Protocol):
    """A decoding state machine the engine drives."""

    @property
    def rows(self) -> int:
        """Rows this task occupies while active (beams, samples; 1 for a single sequence)."""
        ...

    def next_pass(self) -> Pass | None:
        """The next pass to run, or None when the task is finished."""
        ...

    def feed(self, output: PassOutput) -> None:
        """The output of the pass last returned by :meth:`next_pass`."""
        ...

    def result(self) -> Any: ...

    def close(self) -> None:
        """Release the task's caches (idempotent)."""
        ...


@dataclass(eq=False)
class Ticket:
    """A submitted task; pass it to :meth:`DecoderEngine.cancel`."""

    id: int
    task: Task
    done: Done
    submitted: float = field(default_factory=_now)
    cancelled: bool = False
    finished: bool = False


class EngineStats(NamedTuple):
    """A snapshot of the engine."""

    active_tasks: int
    waiting_tasks: int
    active_rows: int
    iterations: int  # batched forward passes run
    passes: int  # task passes run (passes / iterations = mean batch, in tasks)
    rows: int  # rows run (prefill tokens count one each)
    busy_s: float  # time spent in forward and task logic
    completed: int
    failed: int
    cancelled: int


class DecoderEngine:
    """Runs decoding tasks on one thread, batched (see the module docstring).

    Args:
        decoder: the prepared decoder weights.
        max_tasks: tasks active at once (their caches are alive); others wait.
        max_rows: rows active at once (a beam search of 5 takes 5).
        threads: 2 runs the large few-row products (the logits) on two threads; 1 keeps one.
        name: the thread's name.
    """

    def __init__(self, decoder: PreparedDecoder, *, max_tasks: int = 32, max_rows: int = 96, threads: int = 2,
                 name: str = "aiowhisper-decoder"):
        if max_tasks < 1 or max_rows < 1:
            raise ValueError("max_tasks and max_rows must be >= 1")
        self.decoder = decoder
        self.max_tasks, self.max_rows = max_tasks, max_rows
        self.threads = max(1, threads)
        self._twin: _Twin | None = None
        self._name = name
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._active: list[Ticket] = []
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._counts = dict(iterations=0, passes=0, rows=0, completed=0, failed=0, cancelled=0)
        self._busy = 0.0

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("the decoder engine is already started")
            self._stopping = False
            if self.threads > 1:
                self._twin = _Twin(self._name + "-2")
            self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Cancel every task (their ``done`` get :class:`TaskCancelled`), then join the thread. Blocking;
        idempotent."""
        with self._cond:
            thread, self._stopping = self._thread, True
            self._cond.notify_all()
        if thread is not None:
            thread.join()
        twin, self._twin = self._twin, None
        if twin is not None:
            twin.stop()
        with self._cond:
            self._thread = None
            leftovers = list(self._waiting)
            self._waiting.clear()
        for ticket in leftovers:  # submitted after the thread ended
            self._end(ticket, None, TaskCancelled("the decoder engine stopped"))

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopping

    # -- any thread -------------------------------------------------------------------------------------
    def submit(self, task: Task, done: Done) -> Ticket:
        """Queue ``task``; ``done(result, None)`` or ``done(None, error)`` is called on the engine thread."""
        ticket = Ticket(next(self._ids), task, done)
        with self._cond:
            if self._thread is None or self._stopping:
                raise RuntimeError("the decoder engine is not running")
            self._waiting.append(ticket)
            self._cond.notify_all()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Stop ``ticket``'s task at the engine's next iteration; its ``done`` gets :class:`TaskCancelled`
        once its caches are released (or its result, if it finished first)."""
        with self._cond:
            ticket.cancelled = True
            self._cond.notify_all()

    def stats(self) -> EngineStats:
        with self._cond:
            c = self._counts
            return EngineStats(len(self._active), len(self._waiting), sum(t.task.rows for t in self._active),
                               c["iterations"], c["passes"], c["rows"], self._busy, c["completed"], c["failed"],
                               c["cancelled"])

    # -- engine thread ----------------------------------------------------------------------------------
    def _admit(self) -> None:
        """Under the lock: move waiting tasks into the active set while the budgets allow (FIFO)."""
        rows = sum(t.task.rows for t in self._active)
        while self._waiting and len(self._active) < self.max_tasks:
            nxt = self._waiting[0]
            if self._active and rows + nxt.task.rows > self.max_rows:
                break  # a task larger than the budget still runs, alone
            self._waiting.popleft()
            self._active.append(nxt)
            rows += nxt.task.rows

    def _main(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._active and not self._waiting:
                    self._cond.wait()
                if self._stopping:
                    doomed = self._active + list(self._waiting)
                    self._active, self._waiting = [], deque()
                else:
                    doomed = [t for t in itertools.chain(self._active, self._waiting) if t.cancelled]
                    self._active = [t for t in self._active if not t.cancelled]
                    self._waiting = deque(t for t in self._waiting if not t.cancelled)
                    self._admit()
                batch = list(self._active)
            for ticket in doomed:
                self._end(ticket, None, TaskCancelled("cancelled"))
            if self._stopping:
                return
            self._iterate(batch)

    def _iterate(self, batch: list[Ticket]) -> None:
        t0 = _now()
        runnable: list[tuple[Ticket, Pass]] = []
        for ticket in batch:
            try:
                p = ticket.task.next_pass()
            except Exception as exc:
                self._finish(ticket, None, exc)
                continue
            if p is None:
                self._complete(ticket)
            else:
                runnable.append((ticket, p))
        if runnable:
            try:
                outputs = forward(self.decoder, [p for _, p in runnable],
                                  self._twin.run2 if self._twin is not None else None)
            except Exception as exc:  # a defect or an invalid pass: every task in the batch fails with it
                for ticket, _ in runnable:
                    err = RuntimeError(f"the decoder's forward pass failed: {type(exc).__name__}: {exc}")
                    err.__cause__ = exc
                    self._finish(ticket, None, err)
                runnable = []
                outputs = []
            for (ticket, _), out in zip(runnable, outputs):
                try:
                    ticket.task.feed(out)
                except Exception as exc:
                    self._finish(ticket, None, exc)
        with self._cond:
            c = self._counts
            c["iterations"] += bool(runnable)
            c["passes"] += len(runnable)
            c["rows"] += sum(int(p.tokens.size) for _, p in runnable)
            self._busy += _now() - t0

    def _complete(self, ticket: Ticket) -> None:
        try:
            result = ticket.task.result()
        except Exception as exc:
            self._finish(ticket, None, exc)
            return
        self._finish(ticket, result, None)

    def _finish(self, ticket: Ticket, result: Any, error: BaseException | None) -> None:
        with self._cond:
            if ticket in self._active:
                self._active.remove(ticket)
        self._end(ticket, result, error)

    def _end(self, ticket: Ticket, result: Any, error: BaseException | None) -> None:
        """Release the task and tell its owner, exactly once."""
        if ticket.finished:
            return
        ticket.finished = True
        try:
            ticket.task.close()
        finally:
            with self._cond:
                key = "completed" if error is None else "cancelled" if isinstance(error, TaskCancelled) else "failed"
                self._counts[key] += 1
            try:
                ticket.done(result, error)
            except Exception:  # the owner is gone (its event loop closed): nobody is left to tell
                pass
