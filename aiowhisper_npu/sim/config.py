"""The simulated NPU's parameters (:class:`SimConfig`) and the GIL-holding sleep its blocking calls use.

Calibration (see ``../shared/reference/origin-analysis.md`` §5, a Ryzen 9 8945HS / Phoenix NPU1, XRT 2.20):

==========================  ==========  =====================================================================
parameter                   default     source
==========================  ==========  =====================================================================
``submit_s``                69 µs       measured: ``kernel(...)`` submit ≈ 0.069 ms per tile (pipelined run)
``sync_latency_s``          1 µs        two-point fit of "write 12 KB + sync ≈ 0.022 ms" and
``sync_bytes_per_s``        585 MB/s    "sync + read 4 KB ≈ 0.008 ms" (both Python-level, so this overstates
                                        large syncs; every measured sync was ≤ 12 KB)
``run_overhead_s``          40 µs       measured: GELU (512 B) min 0.110 ms per call − 0.069 ms submit
``dma_latency_s``           2 µs        assumption (shim DMA descriptor set-up); not measured
``dma_bytes_per_s``         8 GB/s      assumption: 2 shim MM2S channels × 32 bit × 1 GHz per column
``columns``                 4           npu1 (Phoenix) as mlir-aie targets it (``npu1_4col``)
``max_contexts``            6           measured: the 7th ``hw_context`` fails (CREATE_HWCTX err=-2)
``SCALAR_MACS_PER_S``       0.25 G/s    measured: scalar int8 attention 64x64 (2·64³ MAC) ≈ 2.23 ms end to
                                        end − submit − syncs − run overhead ≈ 2.09 ms
``VECTOR_BF16_MACS_PER_S``  256 G/s     assumption: AIE-ML 128 bf16 MAC/cycle/core × 4 cores × 1 GHz, at 50 %
                                        efficiency; no bf16 GEMM was measured. Used by the packaged xclbin.
==========================  ==========  =====================================================================

A kernel's modeled time on its column is::

    run_overhead + dma_latency + (max if dma_overlap else +)(dma_bytes / dma_bytes_per_s, compute)

where ``compute`` is the kernel's fixed time (``SimConfig.op_time_s[op]`` or the xclbin's ``fixed_s``) or
``base_s + macs / macs_per_s``; everything is multiplied by ``time_scale``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

__all__ = ["SimConfig", "FAULTS", "SCALAR_MACS_PER_S", "VECTOR_BF16_MACS_PER_S", "gil_sleep", "gil_copy",
           "gil_fill"]

SCALAR_MACS_PER_S = 2.5e8
VECTOR_BF16_MACS_PER_S = 2.56e11
FAULTS = ("error", "abort", "timeout")


@dataclass(frozen=True)
class SimConfig:
    """Everything the simulated NPU models. Immutable; build a new one to change a value.

    ``faults`` maps a device-wide run index (0-based, in submission order) to ``"error"`` (the run ends in
    ``ERT_CMD_STATE_ERROR``), ``"abort"`` (``ERT_CMD_STATE_ABORT``) or ``"timeout"`` (the run hangs: it never
    completes, and after ``watchdog_s`` the driver's watchdog reports ``ERT_CMD_STATE_TIMEOUT`` and frees
    the column). ``op_time_s`` fixes the compute time of a kernel by its ``op`` (or kernel name).
    """

    time_scale: float = 1.0
    submit_s: float = 69e-6
    sync_latency_s: float = 1e-6
    sync_bytes_per_s: float = 585e6
    run_overhead_s: float = 40e-6
    dma_latency_s: float = 2e-6
    dma_bytes_per_s: float = 8e9
    dma_overlap: bool = True
    macs_per_s: float | None = None  # overrides every kernel's own rate when set
    op_time_s: Mapping[str, float] = field(default_factory=dict)
    columns: int = 4
    max_contexts: int = 6
    devices: int = 1
    device_name: str = "NPU Phoenix"
    bdf: str = "0000:c5:00.1"
    watchdog_s: float = 2.0
    strict_coherence: bool = True
    numerics: bool = True
    faults: Mapping[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.time_scale < 0:
            raise ValueError(f"time_scale must be >= 0, got {self.time_scale}")
        if self.columns < 1 or self.devices < 0 or self.max_contexts < 1:
            raise ValueError("columns and max_contexts must be >= 1 and devices >= 0")
        if self.sync_bytes_per_s <= 0 or self.dma_bytes_per_s <= 0:
            raise ValueError("bandwidths must be > 0")
        for k, v in self.faults.items():
            if v not in FAULTS:
                raise ValueError(f"fault for run {k} must be one of {FAULTS}, got {v!r}")

    # -- the timing model, in seconds (already scaled) ---------------------------------------------------
    def sync_seconds(self, nbytes: int) -> float:
        """Host time of ``bo.sync`` over ``nbytes`` (a cache flush/invalidate; holds the GIL)."""
        return self.time_scale * (self.sync_latency_s + nbytes / self.sync_bytes_per_s)

    def submit_seconds(self) -> float:
        """Host time of ``kernel(...)`` / ``run.start()`` (holds the GIL)."""
        return self.time_scale * self.submit_s

    def compute_seconds(self, op: str, kernel: str, macs: float, base_s: float, macs_per_s: float | None,
                        fixed_s: float | None) -> float:
        """Unscaled-input compute time of one run of a kernel (returned scaled)."""
        fixed = self.op_time_s.get(kernel, self.op_time_s.get(op, fixed_s))
        if fixed is not None:
            return self.time_scale * fixed
        rate = self.macs_per_s or macs_per_s or VECTOR_BF16_MACS_PER_S
        return self.time_scale * (base_s + macs / rate)

    def run_seconds(self, compute_s: float, dma_bytes: int) -> float:
        """Column time of one run given its (scaled) compute time and the bytes its shim DMA moves."""
        dma = self.time_scale * dma_bytes / self.dma_bytes_per_s
        body = max(dma, compute_s) if self.dma_overlap else dma + compute_s
        return self.time_scale * (self.run_overhead_s + self.dma_latency_s) + body


def _load_c_sleep() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """``usleep`` through ``ctypes.PyDLL``: PyDLL calls keep the GIL, like a pybind11 call without a guard."""
    for name in (None, ctypes.util.find_library("c")):
        try:
            fn = ctypes.PyDLL(name).usleep
        except (OSError, AttributeError, TypeError):
            continue
        fn.argtypes = [ctypes.c_uint]
        fn.restype = ctypes.c_int
        return fn
    return None


_usleep = _load_c_sleep()


def gil_sleep(seconds: float) -> None:
    """Sleep ``seconds`` while holding the GIL (a blocking C call that never releases it).

    Every other Python thread, an asyncio loop included, is frozen meanwhile, exactly as inside pyxrt's
    ``run.wait()`` or ``bo.sync()``. The bulk is one ``usleep`` through ``ctypes.PyDLL``; the last ~150 µs
    (below the kernel's timer slack) spin on the clock, which keeps the GIL too (the interpreter only hands
    it over after its 5 ms switch interval). Without a C library the whole wait spins.
    """
    if seconds <= 0:
        return
    end = time.perf_counter() + seconds
    while _usleep is not None:
        left = end - time.perf_counter() - 150e-6
        if left <= 0:
            break
        _usleep(max(1, min(int(left * 1e6), 500_000)))
    while time.perf_counter() < end:
        pass


# memmove through a PYFUNCTYPE prototype: unlike ctypes.memmove (a CFUNCTYPE), it keeps the GIL.
_memmove = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)(
    ctypes._memmove_addr)  # type: ignore[attr-defined]


_memset = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)(
    ctypes._memset_addr)  # type: ignore[attr-defined]


def gil_fill(dst: np.ndarray, byte: int) -> None:
    """Set every byte of the contiguous ``dst`` to ``byte`` without releasing the GIL (see :func:`gil_copy`)."""
    if not dst.flags.c_contiguous:
        raise ValueError("gil_fill needs a contiguous array")
    if dst.nbytes:
        _memset(dst.ctypes.data, byte, dst.nbytes)


def gil_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """Copy ``src``'s bytes over ``dst``'s (same ``nbytes``) without releasing the GIL, like a C memcpy.

    numpy releases the GIL around large copies; on an event-loop thread, getting it back behind busy
    worker threads can take up to the interpreter's switch interval (5 ms), far longer than the copy.
    """
    if dst.nbytes != src.nbytes:
        raise ValueError(f"gil_copy: {dst.nbytes} != {src.nbytes} bytes")
    if dst.flags.c_contiguous and src.flags.c_contiguous:
        if dst.nbytes:
            _memmove(dst.ctypes.data, src.ctypes.data, dst.nbytes)
    else:
        dst.reshape(-1).view(np.uint8)[...] = np.ascontiguousarray(src).reshape(-1).view(np.uint8)
