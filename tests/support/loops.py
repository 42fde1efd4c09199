"""The event loops the tests run on (the one place that names them), live tasks and threads, and hang guards.

An async test (``@pytest.mark.anyio``) runs on :data:`LOOPS` by default (conftest's ``anyio_backend``
fixture); ``@asyncio_only``, ``@all_loops`` or ``@on_loops(...)`` choose others, and
``@loops_fast_on_asyncio`` / ``@all_loops_fast_on_asyncio`` keep the loops but leave all but asyncio to the
full suite (they are marked ``slow``). A sync test that starts a loop itself takes one of these parameters
too (``(backend, options)`` for ``anyio.run``).

A hang guard is not a timed assertion: it only turns "this never returns" (the failure mode of several of
the defects these tests pin down) into a test failure instead of a stuck test run.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

import anyio
import pytest

# one loop each: (anyio backend, its options), as anyio's pytest plugin and anyio.run take them
ASYNCIO = pytest.param(("asyncio", {}), id="asyncio")
UVLOOP = pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")
TRIO = pytest.param(("trio", {}), id="trio")

LOOPS = [ASYNCIO, UVLOOP]  # the default of every async test
ALL_LOOPS = [ASYNCIO, UVLOOP, TRIO]  # where the behaviour under test involves the event loop


def on_loops(*loops: Any) -> pytest.MarkDecorator:
    """Run an async test on ``loops`` (e.g. ``on_loops(ASYNCIO, TRIO)``) instead of :data:`LOOPS`."""
    return pytest.mark.parametrize("anyio_backend", list(loops), indirect=True)


def slow_loop(loop: Any) -> Any:
    """``loop`` marked ``slow``: the test runs on it in the full suite only, not in ``-m "not slow"``."""
    return pytest.param(*loop.values, marks=[*loop.marks, pytest.mark.slow], id=loop.id)


asyncio_only = on_loops(ASYNCIO)  # results that do not depend on the loop (keeps the suite fast)
all_loops = on_loops(*ALL_LOOPS)
# the same loops, but the fast lane (-m "not slow") runs the test on asyncio only: for tests of a few
# seconds whose other loops the full suite covers
loops_fast_on_asyncio = on_loops(ASYNCIO, slow_loop(UVLOOP))
all_loops_fast_on_asyncio = on_loops(ASYNCIO, slow_loop(UVLOOP), slow_loop(TRIO))

HANG_S = 120.0  # far beyond any healthy run of these tests on a loaded 2-core machine


def on_trio() -> bool:
    """Whether the running event loop is trio's (else asyncio's, possibly uvloop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return True
    return False


def live_tasks() -> int:
    """Tasks alive in the current event loop (asyncio, uvloop or trio)."""
    if on_trio():
        import trio

        def walk(task: Any) -> int:
            return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

        return walk(trio.lowlevel.current_root_task())
    return len(asyncio.all_tasks())


def lane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("aiowhisper-lane")]


async def settle(cond: Callable[[], bool], guard_s: float = HANG_S) -> bool:
    """Yield to the loop until ``cond()`` holds (cleanup may take a few loop iterations)."""
    with anyio.move_on_after(guard_s):
        while not cond():
            await anyio.sleep(0.005)
        return True
    return False


async def join_thread(thread: threading.Thread, guard_s: float = HANG_S) -> bool:
    """Wait for ``thread`` without blocking the event loop; False if it is still alive after the guard."""
    return await settle(lambda: not thread.is_alive(), guard_s)


def run_guarded(fn: Callable[[], Any], guard_s: float = HANG_S) -> Any:
    """Run ``fn()`` in a daemon thread; fail the test (instead of hanging it) if it never returns."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            box["error"] = exc

    t = threading.Thread(target=main, daemon=True, name="robustness-guarded")
    t.start()
    t.join(guard_s)
    if t.is_alive():
        pytest.fail(f"did not return within {guard_s:.0f} s (hung)")
    if "error" in box:
        raise box["error"]
    return box.get("result")
