"""The CPU device: numpy tile kernels on ``lanes`` kernel workers, with real device-side memory.

Device buffers are separate, 64-byte aligned host allocations, so ``to_device``/``from_device`` are real
copies and the weights are copied once into device memory at :meth:`CpuDevice.load`. With
``zero_copy=True`` the pipeline stages its inputs straight into device memory (``host_view``), and the
copies become no-ops, like host-only buffers on an NPU.

A kernel runs in the thread that waits for it (the pipeline's lane thread): numpy and BLAS release the GIL,
so a kernel on one lane overlaps host work and kernels on the other lanes. BLAS threads are split between
lanes through threadpoolctl when it is installed (set by each kernel worker before it runs). The default
is one BLAS thread per lane: OpenBLAS splits a GEMM differently with several threads, or when another
thread is in BLAS at the same time, which changes rounding; with one thread per lane every kernel is
deterministic however requests interleave, and the lanes are the parallelism.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DeviceError
from ..tiles import ArraySpec, BufferView, KernelProgram, aligned_empty

__all__ = ["CpuBuffer", "CpuRun", "CpuDevice", "set_blas_threads"]


def _blas_controller() -> Any:
    """threadpoolctl's controller of numpy's BLAS, or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    libs = ThreadpoolController().select(user_api="blas").lib_controllers
    return libs[0] if libs else None


def set_blas_threads(n: int) -> None:
    """Set BLAS threads from the calling thread (used by tests and benchmarks for reference runs)."""
    ctl = _blas_controller()
    if ctl is not None and ctl.get_num_threads() != n:
        ctl.set_num_threads(n)


class CpuBuffer:
    """Device memory of the CPU device: an aligned byte array the device owns."""

    __slots__ = ("data", "freed", "views")

    def __init__(self, nbytes: int):
        self.data = aligned_empty(nbytes)
        self.freed = False
        self.views: dict[tuple[int, ArraySpec], np.ndarray] = {}  # typed windows, made once

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def address(self) -> int:
        return int(self.data.ctypes.data)


def _view(v: BufferView) -> np.ndarray:
    buf: CpuBuffer = v.buffer
    if buf.freed:
        raise DeviceError("use of a freed device buffer")
    key = (v.offset, v.spec)
    out = buf.views.get(key)
    if out is None:
        n = v.spec.nbytes
        out = buf.views[key] = buf.data[v.offset : v.offset + n].view(v.spec.dtype).reshape(v.spec.shape)
    return out


class CpuRun:
    """A launched CPU kernel: it executes in the first ``wait`` call, which records its timing."""

    __slots__ = ("call", "lane", "timing", "done", "error", "__dict__")

    def __init__(self, call: Any, lane: int):
        self.call = call
        self.lane = lane
        self.timing = (0.0, 0.0)
        self.done = False
        self.error: BaseException | None = None


class CpuDevice:
    """Numpy kernels on ``lanes`` parallel workers. See the module docstring."""

    name = "cpu"

    def __init__(self, lanes: int = 1, *, blas_threads: int | None = None):
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        self.lanes = lanes
        self.blas_threads = blas_threads or 1  # see the module docstring: determinism
        self._program: KernelProgram | None = None
        self._resident: dict[str, np.ndarray] = {}
        self._workspaces: list[Any] = []
        self._lane_locks = [threading.Lock() for _ in range(lanes)]
        self._blas: Any = None
        self.buffers_live = 0

    # -- set-up ---------------------------------------------------------------------------------------
    def load(self, program: KernelProgram) -> None:
        self._program = program
        resident = {}
        for k, v in program.resident.items():  # weights copied once into device memory, and stay
            buf = aligned_empty(v.nbytes).view(v.dtype).reshape(v.shape)
            buf[...] = v
            resident[k] = buf
        self._resident = resident
        self._workspaces = [program.make_workspace() for _ in range(self.lanes)]
        self._limit_blas()

    def _limit_blas(self) -> None:
        self._blas = _blas_controller()
        self._ensure_blas_threads()  # now too (load runs in a worker thread), so host-side BLAS agrees
        if self._blas is None and self.lanes > 1:
            warnings.warn("threadpoolctl is not installed: BLAS threads are not split between lanes "
                          "(pip install threadpoolctl)", RuntimeWarning, stacklevel=3)

    def _ensure_blas_threads(self) -> None:
        """Set the BLAS thread count from the kernel's own thread before it runs (cheap when unchanged).

        The count is process-wide. Setting it from the event loop's thread proved unreliable with
        OpenBLAS, so each kernel worker checks it instead; runtimes with different lane counts should not
        run kernels at the same time in one process.
        """
        ctl = self._blas
        if ctl is not None and ctl.get_num_threads() != self.blas_threads:
            ctl.set_num_threads(self.blas_threads)

    def close(self) -> None:
        self._resident = {}
        self._workspaces = []

    # -- memory ---------------------------------------------------------------------------------------
    def alloc(self, nbytes: int) -> CpuBuffer:
        self.buffers_live += 1
        return CpuBuffer(nbytes)

    def free(self, buf: CpuBuffer) -> None:
        if not buf.freed:
            buf.freed = True
            self.buffers_live -= 1

    def host_view(self, buf: CpuBuffer) -> np.ndarray:
        return buf.data

    def to_device(self, dst: BufferView, src: np.ndarray) -> None:
        d = _view(dst)
        if d.ctypes.data != src.ctypes.data:  # zero-copy staging already wrote device memory
            np.copyto(d, src)

    def from_device(self, src: BufferView, dst: np.ndarray) -> None:
        s = _view(src)
        if s.ctypes.data != dst.ctypes.data:
            np.copyto(dst, s)

    # -- kernels --------------------------------------------------------------------------------------
    def launch(self, op: str, params: Mapping[str, Any], inputs: Sequence[BufferView],
               outputs: Sequence[BufferView], tensors: Mapping[str, BufferView], lane: int) -> CpuRun:
        if self._program is None:
            raise DeviceError("device has no program loaded")
        if not 0 <= lane < self.lanes:
            raise DeviceError(f"lane {lane} out of range 0..{self.lanes - 1}")
        call = (op, params, [_view(v) for v in inputs], [_view(v) for v in outputs],
                {k: _view(v) for k, v in tensors.items()})
        return CpuRun(call, lane)

    def wait(self, run: CpuRun, timeout_s: float | None = None) -> bool:
        if not run.done:
            assert self._program is not None
            op, params, ins, outs, tensors = run.call
            with self._lane_locks[run.lane]:  # one kernel per lane at a time: it owns the lane's workspace
                self._ensure_blas_threads()
                t0 = time.perf_counter()
                try:
                    self._program.run(op, self._resident, self._workspaces[run.lane], params, ins, outs,
                                      tensors)
                except BaseException as exc:
                    run.error = exc
                finally:
                    run.timing = (t0, time.perf_counter())
                    run.done = True
                    run.call = None
        if run.error is not None:
            raise run.error
        return True
