"""Which event loop is running, posting to it from other threads, and tasks outside the caller's task tree.

Every object that holds loop-bound state (anyio events, memory streams, cancel scopes) belongs to the event
loop it was created in and must only be used from that loop's thread. :func:`current_loop` names that
loop so a component can refuse a call from any other (asyncio and uvloop: the loop object; trio: its
token). :func:`spawn_system_task` starts a task that is not a child of the calling task: the runtime's
services live in one (see :mod:`aiowhisper_npu.runtime.host`), so their lifetime is not nested inside
whatever task happened to open the runtime.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Awaitable, Callable

__all__ = ["current_loop", "loop_poster", "spawn_system_task"]


def current_loop() -> object | None:
    """An identity of the event loop running in this thread, or None when none is running."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    try:
        import trio
    except ImportError:  # pragma: no cover - trio is the only other loop anyio runs on
        return None
    try:
        return trio.lowlevel.current_trio_token()
    except RuntimeError:
        return None


def loop_poster() -> Callable[..., None]:
    """A thread-safe, non-blocking "call this soon on the current event loop" (asyncio, uvloop or trio)."""
    try:
        loop = asyncio.get_running_loop()

        def post(fn: Callable[..., object], *args: Any) -> None:
            loop.call_soon_threadsafe(fn, *args)

        return post
    except RuntimeError:
        pass
    import trio  # the only other event loop anyio runs on

    return trio.lowlevel.current_trio_token().run_sync_soon


def spawn_system_task(fn: Callable[[], Awaitable[None]], name: str) -> Any:
    """Start ``fn()`` as a task of the current loop that is no child of the calling task.

    ``fn`` must handle its own errors (on trio an exception escaping a system task ends the run). The task
    runs in a copy of the caller's context variables, and is cancelled when the event loop shuts down
    (asyncio cancels leftover tasks; trio cancels system tasks when the main task ends). Returns the
    asyncio task (keep a reference to it), or None on trio.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        import trio

        trio.lowlevel.spawn_system_task(fn, name=name, context=contextvars.copy_context())
        return None
    return loop.create_task(fn(), name=name)  # type: ignore[arg-type]
