"""The simulated NPU behind the pyxrt stand-in: memory, hardware contexts, column queues, runs and faults.

Timing: every run gets a *modeled* window when it is submitted. It starts at ``max(now, column free)``
and lasts :meth:`SimConfig.run_seconds`, so runs on one column execute in order and runs on different
columns overlap. Numerics: a worker thread per column executes the kernel's numpy implementation on the
device copies of its arguments (numpy releases the GIL, so this overlaps the host). A run completes at
``max(modeled end, numerics done)``.

Fidelity compromise: the numerics need host CPU that a real NPU would not take (the workers run at nice
10 to compete less with the host). When they lag behind the modeled end (a slow or loaded host),
completion is late, and the part of a blocking ``run.wait()`` spent waiting for them releases the GIL (so
the simulator's own worker can progress); the modeled part holds it, as pyxrt does for the whole wait.

Coherence: with ``strict_coherence`` (the default) a BO has separate host and device copies, and only
``bo.sync`` moves data between them, so a missing sync shows up as wrong numbers, as it can on hardware.

Lifetime: pyxrt's ``bo.map()`` memoryview does not own the BO, so on hardware a view that outlives its BO
dangles. Here, when the last ``bo`` object of an allocation goes away (:meth:`SimNPU.free`), every
memoryview ``map()`` handed out is released (using it raises ``ValueError``) and the memory is poisoned
(0xFF bytes: NaN as float32), so a later read through a numpy array made from such a view returns NaN and a
write is lost. A view still referenced at that moment is counted in :attr:`SimNPU.views_outliving_free`,
so tests can show that no path keeps one.
"""

from __future__ import annotations

import itertools
import os
import queue
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .config import SimConfig, gil_copy, gil_fill, gil_sleep
from .ops import KernelCall, convert, resolve_impl
from .xclbin import ArgDesc, KernelDesc, XclbinDesc

__all__ = ["Memory", "MemRef", "SimRun", "RunRecord", "SimNPU", "NEW", "QUEUED", "RUNNING", "COMPLETED",
           "ERROR", "ABORT", "TIMEOUT", "TERMINAL"]

NEW, QUEUED, RUNNING, COMPLETED, ERROR, ABORT, TIMEOUT = 1, 2, 3, 4, 5, 6, 8
TERMINAL = frozenset({4, 5, 6, 8, 9, 10, 11})
_PAGE = 4096
_serial = itertools.count(1)


def _pages(nbytes: int) -> np.ndarray:
    raw = np.zeros(nbytes + _PAGE, np.uint8)
    off = (-raw.ctypes.data) % _PAGE
    return raw[off : off + nbytes]


POISON = 0xFF  # freed memory reads as 0xFF bytes: NaN as float32, -1 as a signed integer


class Memory:
    """One allocation: host pages, and a separate device copy under strict coherence."""

    def __init__(self, nbytes: int, strict: bool, address: int):
        self.serial = next(_serial)
        self.host = _pages(nbytes)
        self.dev = _pages(nbytes) if strict else self.host
        self.address = address
        self.generation = 0  # bumped whenever device memory changes (sync to device, kernel writes)
        self.synced_to_device = False
        self.owners = 0  # live ``bo`` objects (a BO and its sub-buffers) sharing this allocation
        self.views: list[tuple[np.ndarray, memoryview]] = []  # what ``bo.map()`` handed out, and its array
        self.freed = False


@dataclass(frozen=True)
class MemRef:
    """A window on a :class:`Memory` (a whole BO or a sub-buffer)."""

    mem: Memory
    offset: int
    size: int

    @property
    def host(self) -> np.ndarray:
        return self.mem.host[self.offset : self.offset + self.size]

    @property
    def dev(self) -> np.ndarray:
        return self.mem.dev[self.offset : self.offset + self.size]


class RunRecord(NamedTuple):
    """One run as the device executed it (``time.perf_counter`` seconds)."""

    index: int  # type: ignore[assignment]  # a field named like tuple.index, as in the recorded runs
    kernel: str
    op: str
    column: int
    submitted: float
    start: float
    end: float


class SimRun:
    """A submitted command: its modeled window, its fault, and the numerics' completion."""

    def __init__(self, index: int, kernel: KernelDesc, column: int, fault: str | None):
        self.index = index
        self.kernel = kernel
        self.column = column
        self.fault = fault
        self.t_submit = self.t_start = self.t_end = 0.0
        self.final = {None: COMPLETED, "error": ERROR, "abort": ABORT, "timeout": TIMEOUT}[fault]
        self.error: str | None = None
        self.call: KernelCall | None = None
        self.writes: tuple[MemRef, ...] = ()
        self.done = threading.Event()

    def fail(self, reason: str) -> None:
        self.final, self.error = ERROR, reason

    def state_at(self, now: float) -> int:
        """The modeled state: QUEUED, RUNNING or final (``run.state()`` shows NEW until final, as amdxdna)."""
        if now < self.t_start:
            return QUEUED
        if self.fault == "timeout":
            return TIMEOUT if now >= self.t_end else RUNNING
        if now < self.t_end or not self.done.is_set():
            return RUNNING
        return self.final

    def wait(self, timeout_s: float | None) -> int:
        """Block until a terminal state or ``timeout_s`` (then TIMEOUT). Holds the GIL for the modeled part."""
        deadline = float("inf") if timeout_s is None else time.perf_counter() + timeout_s
        while True:
            now = time.perf_counter()
            st = self.state_at(now)
            if st in TERMINAL:
                return st
            if now >= deadline:
                return TIMEOUT
            if now < self.t_end:
                gil_sleep(min(self.t_end, deadline) - now)
            else:  # modeled time is over; host numerics still running (see the module docstring)
                self.done.wait(min(deadline - now, 0.002))


def _lower_priority() -> None:
    """Run this numerics thread at a low CPU priority (nice 10): a real NPU takes no host CPU at all.

    Not the lowest: under heavy outside load a nice-19 thread starves and runs overshoot their model.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # per thread on Linux
    except (AttributeError, OSError):
        pass


class _ReadCache:
    """Converted (rounded/widened) read arguments, keyed by memory generation; bounded LRU by bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[Any, ...], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, ref: MemRef, arg: ArgDesc, raw: np.ndarray, offset: int) -> np.ndarray:
        """``convert(arg, raw)`` for ``raw``, the bytes at ``offset`` in ``ref``, cached until they change."""
        mem = ref.mem
        key = (mem.serial, ref.offset + offset, raw.nbytes, mem.generation, arg.dtype, arg.precision)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        val = convert(arg, raw)  # a fresh array (callers only cache converting reads)
        val.setflags(write=False)
        with self._lock:
            self._items[key] = val
            self._bytes += val.nbytes
            while self._bytes > self.max_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return val


class SimNPU:
    """One simulated device (``xrt.device(i)`` handles share it, like the real driver's device)."""

    def __init__(self, index: int, config: SimConfig):
        self.index = index
        self.config = config
        # reentrant: weakref finalizers (hw_context, bo) call back into this object and may run from the
        # garbage collector while this thread already holds the lock
        self._lock = threading.RLock()
        self._xclbins: dict[str, XclbinDesc] = {}
        self._contexts: dict[int, tuple[str, int]] = {}
        self._ctx_ids = itertools.count()
        self._col_free = [0.0] * config.columns
        self._queues: list[queue.SimpleQueue[SimRun]] = [queue.SimpleQueue() for _ in range(config.columns)]
        self._workers: list[threading.Thread | None] = [None] * config.columns
        self._scratch: list[dict[Any, Any]] = [{} for _ in range(config.columns)]
        self._submitted = 0
        self._faults: dict[int, str] = dict(config.faults)
        self._next_faults: deque[str] = deque()
        self._next_address = 0x4000_0000
        self._cache = _ReadCache(256 << 20) if config.strict_coherence else None
        self.records: deque[RunRecord] = deque(maxlen=100_000)
        self.modeled_busy_s = 0.0  # summed modeled run spans (column-seconds), the device's own busy time
        self.views_outliving_free = 0  # map() views still referenced when their BO was freed
        self.bos_live = 0  # allocations not freed yet

    # -- xclbins and contexts -------------------------------------------------------------------------
    def register(self, desc: XclbinDesc) -> None:
        for k in desc.kernels:
            resolve_impl(k.impl)  # a broken implementation is an invalid xclbin, found at registration
        with self._lock:
            self._xclbins[desc.uuid] = desc

    def xclbin(self, uuid: str) -> XclbinDesc:
        desc = self._xclbins.get(uuid)
        if desc is None:
            raise RuntimeError(f"No xclbin with uuid '{uuid}' is registered with device {self.index}: "
                               "Invalid argument")
        return desc

    def open_context(self, uuid: str) -> tuple[int, int]:
        """Allocate a hardware context; returns (id, column). Fails like amdxdna past ``max_contexts``."""
        self.xclbin(uuid)
        with self._lock:
            if len(self._contexts) >= self.config.max_contexts:
                raise RuntimeError("DRM_IOCTL_AMDXDNA_CREATE_HWCTX IOCTL failed (err=-2): No such file or directory")
            same = sum(1 for u, _ in self._contexts.values() if u == uuid)
            cid = next(self._ctx_ids)
            column = same % self.config.columns  # the i-th context of an xclbin gets column i
            self._contexts[cid] = (uuid, column)
        return cid, column

    def close_context(self, cid: int) -> None:
        with self._lock:
            self._contexts.pop(cid, None)

    @property
    def contexts_live(self) -> int:
        return len(self._contexts)

    # -- memory ---------------------------------------------------------------------------------------
    def allocate(self, nbytes: int) -> Memory:
        with self._lock:
            addr = self._next_address
            self._next_address += -(-nbytes // _PAGE) * _PAGE
            self.bos_live += 1
        return Memory(nbytes, self.config.strict_coherence, addr)

    def free(self, mem: Memory) -> None:
        """The last ``bo`` of ``mem`` is gone: release its ``map()`` views and poison it (module docstring)."""
        outliving = 0
        while mem.views:
            owner, view = mem.views.pop()
            try:
                view.release()  # using the memoryview map() returned now raises ValueError
            except BufferError:  # something holds a buffer export of it
                outliving += 1
            del view
            # ``owner`` is the array the view was made from: past ``owner`` and the argument, only a view
            # derived from it (a numpy array made with np.frombuffer, a memoryview of it) still refers to it
            if sys.getrefcount(owner) > 2:
                outliving += 1
        gil_fill(mem.host, POISON)  # holds the GIL: this may run inside a GIL-holding wait (a finalizer)
        if mem.dev is not mem.host:
            gil_fill(mem.dev, POISON)
        mem.freed = True
        with self._lock:
            self.views_outliving_free += outliving
            self.bos_live -= 1

    def sync(self, ref: MemRef, to_device: bool, size: int, offset: int) -> None:
        """``bo.sync``: copy between the host and device copies, taking the modeled time with the GIL held."""
        if size + offset > ref.size:
            raise RuntimeError("sync past buffer size: Invalid argument")
        a, b = ref.offset + offset, ref.offset + offset + size
        if to_device:
            if ref.mem.dev is not ref.mem.host:
                gil_copy(ref.mem.dev[a:b], ref.mem.host[a:b])
            ref.mem.generation += 1
            ref.mem.synced_to_device = True
        elif ref.mem.dev is not ref.mem.host:
            gil_copy(ref.mem.host[a:b], ref.mem.dev[a:b])
        gil_sleep(self.config.sync_seconds(size))

    # -- faults ---------------------------------------------------------------------------------------
    def inject_fault(self, kind: str, run_index: int | None = None) -> None:
        """Make run ``run_index`` (or the next run submitted) end in ``kind``: error, abort or timeout."""
        if kind not in ("error", "abort", "timeout"):
            raise ValueError(f"fault must be 'error', 'abort' or 'timeout', got {kind!r}")
        with self._lock:
            if run_index is None:
                self._next_faults.append(kind)
            else:
                self._faults[run_index] = kind

    @property
    def runs_submitted(self) -> int:
        return self._submitted

    # -- runs -----------------------------------------------------------------------------------------
    def submit(self, kernel: KernelDesc, column: int, args: dict[str, MemRef], problem: str | None) -> SimRun:
        """Queue a run on ``column``; ``problem`` (bad instructions or arguments) makes it end in ERROR."""
        with self._lock:
            index = self._submitted
            self._submitted += 1
            fault = self._faults.pop(index, None) or (self._next_faults.popleft() if self._next_faults else None)
        run = SimRun(index, kernel, column, fault)
        compute, dma = 0.0, 0
        if problem is not None:
            run.fail(problem)
        else:
            cache = self._cache
            call = KernelCall(kernel, {k: v.dev for k, v in args.items()}, self._scratch[column],
                              (lambda name, a, raw, off: cache.get(args[name], a, raw, off)) if cache else None)
            try:
                macs, dma = resolve_impl(kernel.impl).cost(call)
                macs = kernel.macs if kernel.macs is not None else macs
                compute = self.config.compute_seconds(kernel.op, kernel.name, macs, kernel.base_s,
                                                      kernel.macs_per_s, kernel.fixed_s)
            except Exception as exc:  # arguments the kernel cannot interpret: the firmware reports an error
                run.fail(f"{type(exc).__name__}: {exc}")
            run.call = call
            run.writes = tuple(args[a.name] for a in kernel.args if a.writes and a.name in args)
        now = time.perf_counter()
        with self._lock:
            run.t_submit = now
            run.t_start = max(now, self._col_free[column])
            span = self.config.watchdog_s * self.config.time_scale if fault == "timeout" else \
                self.config.run_seconds(compute, dma)
            run.t_end = run.t_start + span
            self.modeled_busy_s += span
            self._col_free[column] = run.t_end
            self._queues[column].put(run)
            if self._workers[column] is None:
                t = threading.Thread(target=self._work, args=(column,), daemon=True,
                                     name=f"sim-npu{self.index}-col{column}")
                self._workers[column] = t
                t.start()
        return run

    def _work(self, column: int) -> None:
        _lower_priority()
        q = self._queues[column]
        while True:
            try:
                run = q.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    if q.empty():
                        self._workers[column] = None
                        return
                continue
            self._execute(run)

    def _execute(self, run: SimRun) -> None:
        try:
            if run.final == COMPLETED and self.config.numerics and run.call is not None:
                try:
                    resolve_impl(run.kernel.impl).run(run.call)
                except Exception as exc:
                    run.fail(f"{type(exc).__name__}: {exc}")
                for ref in run.writes:
                    ref.mem.generation += 1
        finally:
            run.call = None
            run.done.set()
            self.records.append(RunRecord(run.index, run.kernel.name, run.kernel.op, run.column, run.t_submit,
                                          run.t_start, max(run.t_end, time.perf_counter())))
