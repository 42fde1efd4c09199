"""The task that owns a runtime's resources and background work, apart from the caller's tasks.

A :class:`~aiowhisper_npu.runtime.runtime.Runtime` holds a device, a buffer pool, the pipeline's stage
tasks, lane threads, and detached stream readers. If those lived in a task group entered by
``Runtime.__aenter__``, the group's cancel scope would enclose the caller's own code: closing from another
task, or from inside a nested scope (``async with rt.encode_stream(...)``), would exit it out of order, and an
exception in a background task would cancel the caller. Instead, :class:`ServiceHost` runs them in a task
of their own, started with :func:`~aiowhisper_npu.pipeline.loop.spawn_system_task`:

* :meth:`ServiceHost.open` spawns the host task, which runs ``setup(stack)``: every resource goes into the
  host's :class:`~contextlib.AsyncExitStack` (callbacks, context managers, task groups for services),
  in the host task, so it is released in reverse order in the same task that acquired it;
* then the host enters one more task group for background tasks (:meth:`ServiceHost.start_soon`) and
  waits;
* :meth:`ServiceHost.close`, from any task of the owning loop and at any nesting, cancels the host's scope
  and waits (shielded) until the stack has unwound. Called from a task the host itself runs (a detached
  stream reader's source, say), it only requests the close: a task cannot wait for its own end.

An error in ``setup`` is raised by :meth:`open` as itself. A background task's exception is logged and
ends only that task. If a service fails later, the host closes and the failure is raised by :meth:`close`.
If the event loop shuts down with the host still open, the loop cancels it and the stack unwinds then.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any, Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

from ..pipeline.loop import current_loop, spawn_system_task

__all__ = ["NOT_OPEN", "ServiceHost", "WRONG_LOOP_HINT"]

log = logging.getLogger(__name__)

WRONG_LOOP_HINT = ("a Runtime serves only the event loop it was opened in. To use one runtime from other threads "
                   "(or loops), use the blocking facade: 'with aw.Runtime.sync(model) as rt: rt.encode(...)' "
                   "(aw.SyncRuntime), or call it through anyio.from_thread.run(rt.encode, ...) from a worker "
                   "thread of the runtime's own loop")
NOT_OPEN = "Runtime is not open: use 'async with Runtime(...) as rt'"


class ServiceHost:
    """Runs ``setup`` and background tasks in one task outside the caller's task tree (module docstring)."""

    def __init__(self, name: str = "aiowhisper runtime"):
        self.name = name
        self.loop: object | None = None  # the event loop the host runs in (set by open)
        self._scope: anyio.CancelScope | None = None
        self._tg: TaskGroup | None = None
        self._ready: anyio.Event | None = None
        self._done: anyio.Event | None = None
        self._error: BaseException | None = None
        self._stop = False
        self._task: Any = None  # the asyncio task, kept referenced; None on trio
        self._own_tasks: set[int] = set()  # ids of the host's task and its background tasks

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def open(self, setup: Callable[[AsyncExitStack], Awaitable[None]]) -> None:
        """Start the host task, run ``setup(stack)`` in it, and return once the host is serving.

        Raises ``setup``'s error as itself (whatever it opened is closed first). Cancelling this call
        closes the host before the cancellation propagates.
        """
        if self._done is not None:
            raise RuntimeError("a service host opens once")
        self.loop = current_loop()
        self._ready, self._done = anyio.Event(), anyio.Event()
        self._task = spawn_system_task(lambda: self._main(setup), name=self.name)
        try:
            await self._ready.wait()
        except BaseException:
            await self.close()
            raise
        if self._tg is None:
            error, self._error = self._error, None
            if error is not None:
                raise error
            raise RuntimeError("the runtime was closed while it was opening")

    async def close(self) -> None:
        """Stop the background tasks and unwind the host's stack; from any task of the loop. Idempotent.

        Raises the error that stopped the host, if a service failed while it was serving (once).
        """
        self._stop = True
        if self._scope is not None:
            self._scope.cancel()
        if self._done is None or self.in_host():
            return  # never opened; or called by one of the host's own tasks, which is being cancelled now
        with anyio.CancelScope(shield=True):
            await self._done.wait()
        self.raise_error()

    def raise_error(self) -> None:
        """Raise the error that stopped the host (a service failed), once; nothing if there was none."""
        error, self._error = self._error, None
        if error is not None:
            raise error

    @property
    def serving(self) -> bool:
        """Open, and not closing or stopped."""
        return self._tg is not None and not self._stop

    @property
    def stopped(self) -> bool:
        """The host task has ended (closed, failed, or cancelled with its event loop)."""
        return self._done is not None and self._done.is_set()

    def in_host(self) -> bool:
        """Whether the calling task is the host task or one of its background tasks."""
        return anyio.get_current_task().id in self._own_tasks

    def on_own_loop(self) -> bool:
        """Whether the calling thread runs the event loop the host was opened in."""
        return current_loop() is self.loop

    def check_loop(self, what: str) -> None:
        """``RuntimeError`` (naming ``Runtime.<what>()`` and the blocking facade) unless the calling thread
        runs the host's event loop."""
        if not self.on_own_loop():
            raise RuntimeError(f"Runtime.{what}() was called from another event loop (or thread) than the one "
                               f"the runtime was opened in: {WRONG_LOOP_HINT}")

    def require(self, what: str) -> None:
        """:meth:`check_loop`, then ``RuntimeError`` unless the host is serving (open, not closing)."""
        self.check_loop(what)
        if not self.serving:
            raise RuntimeError(NOT_OPEN)

    # -- background tasks ---------------------------------------------------------------------------------
    def start_soon(self, fn: Callable[[], Awaitable[None]], name: str) -> None:
        """Run ``fn()`` in the host until it returns or the host closes. Its exceptions are logged, and
        end only that task (a background task is expected to deliver its own errors, as stream readers do)."""
        if self._tg is None or self._stop:
            raise RuntimeError(NOT_OPEN)
        self._tg.start_soon(self._guard, fn, name, name=name)

    async def _guard(self, fn: Callable[[], Awaitable[None]], name: str) -> None:
        task = anyio.get_current_task().id
        self._own_tasks.add(task)
        try:
            await fn()
        except Exception:
            log.exception("background task %r failed", name)
        finally:
            self._own_tasks.discard(task)

    # -- the host task ------------------------------------------------------------------------------------
    async def _main(self, setup: Callable[[AsyncExitStack], Awaitable[None]]) -> None:
        assert self._ready is not None and self._done is not None
        self._own_tasks.add(anyio.get_current_task().id)
        try:
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._stop:
                    scope.cancel()
                async with AsyncExitStack() as stack:
                    await setup(stack)
                    self._tg = await stack.enter_async_context(anyio.create_task_group())
                    self._ready.set()
                    await anyio.sleep_forever()
        except Exception as exc:  # setup failed, or a service did: open() or close() raises it
            self._error = exc
        finally:
            self._tg = None
            self._stop = True
            self._ready.set()
            self._done.set()
