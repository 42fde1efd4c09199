"""Kernel lanes: one long-lived thread per lane that waits on launched device runs, in launch order.

The pipeline launches a kernel on the event loop (``Device.launch`` is short), then hands the run to its
lane's thread through a queue and goes on. The thread blocks in ``Device.wait`` (GIL-friendly by the
device contract; the CPU device runs its numpy kernel there) and posts the completion back to the event
loop without waiting for the loop to take it (asyncio's ``call_soon_threadsafe``, trio's
``run_sync_soon``). Compared with a thread-pool call per tile, this costs one queue put on the loop and one
wake-up per direction, and because a lane can hold a run queued behind the one executing, the next kernel
starts as soon as the previous ends: the hop's latency is hidden instead of paid between kernels.

Lifecycle is explicit: :meth:`LaneThreads.start` from the event loop's thread, :meth:`LaneThreads.stop`
(blocking: it joins) when the pipeline stops. A completion posted after the loop has closed is dropped.
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable

from .loop import loop_poster

__all__ = ["LaneThreads", "loop_poster"]

Completion = Callable[[BaseException | None], None]


class LaneThreads:
    """``lanes`` worker threads, each running ``wait(run)`` for the runs submitted to it, in order."""

    def __init__(self, lanes: int, wait: Callable[[Any], object], name: str = "aiowhisper-lane"):
        self._wait = wait
        self._name = name
        self._queues: list[queue.SimpleQueue[tuple[Any, Completion] | None]] = [
            queue.SimpleQueue() for _ in range(lanes)]
        self._threads: list[threading.Thread] = []
        self._post: Callable[..., None] | None = None

    def start(self) -> None:
        """Start the threads; call from the event loop's thread (completions are posted to that loop)."""
        if self._threads:
            raise RuntimeError("lane threads already started")
        self._post = loop_poster()
        for lane, q in enumerate(self._queues):
            t = threading.Thread(target=self._main, args=(q,), name=f"{self._name}-{lane}", daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, lane: int, run: Any, done: Completion) -> None:
        """Queue ``run`` on ``lane``; ``done(error_or_None)`` is later called on the event loop."""
        self._queues[lane].put((run, done))

    def stop(self) -> None:
        """Let every thread finish what it was given, then join them. Blocking; idempotent."""
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join()
        self._threads = []

    def _main(self, q: queue.SimpleQueue[tuple[Any, Completion] | None]) -> None:
        post = self._post
        assert post is not None
        while True:
            job = q.get()
            if job is None:
                return
            run, done = job
            error: BaseException | None = None
            try:
                self._wait(run)
            except BaseException as exc:  # delivered to the pipeline, which fails the tile's request
                error = exc
            try:
                post(done, error)
            except RuntimeError:  # the event loop is closed: nobody is left to tell
                pass
            del job, run, done, error
