"""A blocking facade: one runtime on an event loop of its own thread, safe to call from any thread.

::

    import aiowhisper_npu as aw

    with aw.Runtime.sync("base") as rt:          # or aw.SyncRuntime("base", lanes=2, ...)
        out = rt.encode("speech.wav")            # blocks this thread until done
        for upd in rt.encode_stream(mic_chunks()):  # any iterable; a generator is pulled in a worker thread
            ...

The runtime lives on an anyio blocking portal (:func:`anyio.from_thread.start_blocking_portal`): an event
loop running in a thread of its own, for as long as the facade is open. Every call is handed to that loop
and the calling thread blocks until it is done, so calls from many threads at once run as concurrent tasks
of the one runtime and share it fairly, exactly like concurrent ``await rt.encode(...)`` calls. This is the
supported way to use one runtime from several threads (an async :class:`~.runtime.Runtime` refuses calls
from any loop or thread but its own).

Each method is one line: :func:`blocking` wraps a coroutine method of :class:`~.runtime.Runtime`,
:func:`blocking_iter` a method returning an async iterator (it becomes a :class:`BlockingIterator`). An
argument that is a plain iterator (a generator, say) is handed to the runtime as an async iterator whose
every ``next()`` runs in a worker thread, so a blocking source never blocks the runtime's loop.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
from typing import Any, AsyncIterator, Awaitable, Callable, Concatenate, Generic, Iterator, ParamSpec, TypeVar, cast

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from ..deprecation import warn_renamed
from .runtime import Runtime

__all__ = ["SyncRuntime", "BlockingIterator", "blocking", "blocking_iter"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def blocking(method: Callable[Concatenate[Runtime, P], Awaitable[R]]) -> Callable[Concatenate[SyncRuntime, P], R]:
    """A :class:`SyncRuntime` method that runs the async ``method`` on the runtime's loop and blocks until
    it returns (or raises)."""

    @functools.wraps(method)
    def call(self: SyncRuntime, *args: P.args, **kwargs: P.kwargs) -> R:
        portal, rt = self._target()
        a, kw = _adapt(args, kwargs)
        return portal.call(functools.partial(method, rt, *a, **kw))

    return call


def blocking_iter(method: Callable[Concatenate[Runtime, P], Any]) -> Callable[Concatenate[SyncRuntime, P],
                                                                           BlockingIterator[Any]]:
    """A :class:`SyncRuntime` method for a ``method`` that returns an async iterator (an
    :class:`~aiowhisper_npu.streaming.stream.EncodeStream`, an async generator, or a coroutine resolving to
    one): it is created on the runtime's loop and iterated from the caller's thread."""

    @functools.wraps(method)
    def call(self: SyncRuntime, *args: P.args, **kwargs: P.kwargs) -> BlockingIterator[Any]:
        portal, rt = self._target()
        a, kw = _adapt(args, kwargs)
        return BlockingIterator(portal, portal.call(_open_iter, method, rt, a, kw))

    return call


class BlockingIterator(Generic[T]):
    """Iterates, from any thread, an async iterator that lives on the runtime's loop.

    Use it in a ``with`` block, or call :meth:`close`, to stop the underlying iterator early (for a stream:
    its reader stops and its source is closed); it is closed by itself when exhausted or failed.
    ``wrapped`` is the async iterator itself (``it.wrapped.lag`` for a stream).
    """

    def __init__(self, portal: BlockingPortal, iterator: AsyncIterator[T]):
        self._portal = portal
        self.wrapped = iterator
        self._done = False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        try:
            more, value = self._portal.call(_anext, self.wrapped)
        except BaseException:
            self._done = True
            raise
        if not more:
            self._done = True
            raise StopIteration
        return cast(T, value)

    def close(self) -> None:
        """Stop the underlying iterator (``aclose()`` on the runtime's loop). Idempotent."""
        self._done = True
        aclose = getattr(self.wrapped, "aclose", None)
        if aclose is not None:
            self._portal.call(aclose)

    def __enter__(self) -> BlockingIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncRuntime:
    """A :class:`~.runtime.Runtime` behind a blocking facade (see the module docstring). Thread-safe.

    Args:
        model, **options: as for :class:`~.runtime.Runtime` (``backend=``, ``lanes=``, ...).
        event_loop: the loop the runtime runs on: ``"asyncio"`` (default) or ``"trio"``.
        event_loop_options: passed to :func:`anyio.run` (e.g. ``{"use_uvloop": True}``).

    Use it as ``with SyncRuntime(...) as rt`` (or ``aw.Runtime.sync(...)``), or call :meth:`open` and
    :meth:`close`. Methods: :meth:`encode`, :meth:`encode_mels`, :meth:`transcribe` as on the runtime;
    :meth:`encode_stream`, :meth:`transcribe_iter` and :meth:`captions` return a :class:`BlockingIterator`;
    :meth:`call` runs anything else on the runtime's loop.
    """

    encode = blocking(Runtime.encode)
    encode_mels = blocking(Runtime.encode_mels)
    encode_stream = blocking_iter(Runtime.encode_stream)
    transcribe = blocking(Runtime.transcribe)
    transcribe_iter = blocking_iter(Runtime.transcribe_iter)
    captions = blocking_iter(Runtime.captions)

    def stream(self, *args: Any, **kwargs: Any) -> BlockingIterator[Any]:
        """Deprecated name of :meth:`encode_stream`."""
        warn_renamed("SyncRuntime.stream()", "SyncRuntime.encode_stream()")
        return self.encode_stream(*args, **kwargs)

    def transcribe_stream(self, *args: Any, **kwargs: Any) -> BlockingIterator[Any]:
        """Deprecated name of :meth:`captions`."""
        warn_renamed("SyncRuntime.transcribe_stream()", "SyncRuntime.captions()")
        return self.captions(*args, **kwargs)

    def __init__(self, model: Any = "tiny.en", *, event_loop: str = "asyncio",
                 event_loop_options: dict[str, Any] | None = None, **options: Any):
        self.runtime = Runtime(model, **options)
        self.event_loop = event_loop
        self._loop_options = dict(event_loop_options or {})
        self._lock = threading.Lock()
        self._portal_cm: Any = None
        self._portal: BlockingPortal | None = None

    def open(self) -> SyncRuntime:
        """Start the loop thread and open the runtime on it (loading the model). Blocks until ready."""
        with self._lock:
            if self._portal is not None:
                raise RuntimeError("SyncRuntime is already open")
            cm = start_blocking_portal(self.event_loop, self._loop_options)
            portal = cm.__enter__()
            try:
                portal.call(self.runtime.__aenter__)
            except BaseException:
                cm.__exit__(*sys.exc_info())
                raise
            self._portal_cm, self._portal = cm, portal
        return self

    def close(self) -> None:
        """Close the runtime (calls still running in other threads fail) and stop the loop thread. Idempotent."""
        with self._lock:
            cm, portal = self._portal_cm, self._portal
            self._portal_cm = self._portal = None
            if portal is None:
                return
            try:
                portal.call(self.runtime.aclose)
            finally:
                cm.__exit__(None, None, None)

    def __enter__(self) -> SyncRuntime:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, fn: Callable[[Runtime], Awaitable[R] | R]) -> R:
        """Run ``fn(runtime)`` on the runtime's loop (awaited if it returns an awaitable) and return its result:
        ``rt.call(lambda r: r.buffer_pool.stats())``."""
        portal, rt = self._target()
        return portal.call(_call_maybe_async, fn, rt)

    @property
    def stats(self) -> Any:
        """The runtime's cumulative :class:`~aiowhisper_npu.pipeline.stats.PipelineStats` (a snapshot)."""
        return self.call(lambda r: r.stats)

    @property
    def dims(self) -> Any:
        """The open model's sizes."""
        self._target()
        return self.runtime.dims

    def _target(self) -> tuple[BlockingPortal, Runtime]:
        portal = self._portal
        if portal is None:
            raise RuntimeError("SyncRuntime is not open: use 'with aw.Runtime.sync(...) as rt'")
        return portal, self.runtime


# -- on the runtime's loop ------------------------------------------------------------------------------

async def _open_iter(method: Callable[..., Any], rt: Runtime, args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> AsyncIterator[Any]:
    it = method(rt, *args, **kwargs)
    if inspect.isawaitable(it):
        it = await it
    return it.__aiter__()


async def _anext(it: AsyncIterator[T]) -> tuple[bool, T | None]:
    """(True, item), or (False, None) at the end: StopAsyncIteration never crosses the portal."""
    try:
        return True, await it.__anext__()
    except StopAsyncIteration:
        return False, None


async def _call_maybe_async(fn: Callable[[Runtime], Any], rt: Runtime) -> Any:
    out = fn(rt)
    return await out if inspect.isawaitable(out) else out


# -- blocking sources -----------------------------------------------------------------------------------

def _adapt(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Plain iterators (generators, file-like readers) become async iterators pulled in worker threads."""
    return (tuple(_pulled(a) for a in args), {k: _pulled(v) for k, v in kwargs.items()})


def _pulled(x: Any) -> Any:
    if hasattr(x, "__next__") and hasattr(x, "__iter__") and not hasattr(x, "__aiter__"):
        return PulledInThread(x)
    return x


class PulledInThread:
    """An async iterator over a blocking iterator: each ``next()`` runs in a worker thread.

    Cancelling a pull waits for the ``next()`` in progress to return (a thread cannot be interrupted).
    ``aclose()`` calls the iterator's ``close()`` (a generator's ``finally`` runs), also in a thread.
    """

    def __init__(self, iterator: Iterator[Any]):
        self._it = iterator

    def __aiter__(self) -> PulledInThread:
        return self

    async def __anext__(self) -> Any:
        more, value = await anyio.to_thread.run_sync(_next_or_end, self._it)
        if not more:
            raise StopAsyncIteration
        return value

    async def aclose(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            await anyio.to_thread.run_sync(close)


def _next_or_end(it: Iterator[Any]) -> tuple[bool, Any]:
    try:
        return True, next(it)
    except StopIteration:
        return False, None


Runtime.sync = SyncRuntime  # ``aw.Runtime.sync(model, **options)``: the facade lives here, not in runtime.py
