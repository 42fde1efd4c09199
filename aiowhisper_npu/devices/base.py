"""The small protocol every device (cpu, xrt, the simulated NPU) implements.

A device owns memory the host cannot assume it shares (``DeviceBuffer``), copies into and out of it, and
runs a :class:`~aiowhisper_npu.pipeline.tiles.KernelProgram`'s ops on ``lanes`` parallel kernel workers. Every call
is synchronous and thread-safe enough for the pipeline's use: one caller per lane for ``launch``/``wait``,
one caller for the copies. ``wait`` is the only call that may take long; each device makes it
GIL-friendly (it either releases the GIL or polls in short slices), and the pipeline runs it in a worker
thread so the event loop never waits on a device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..pipeline.tiles import ArraySpec, KernelProgram

__all__ = ["ALIGN", "aligned_empty", "DeviceBuffer", "BufferView", "Run", "Device"]

ALIGN = 64  # bytes: cache line, and what DMA engines want


def aligned_empty(nbytes: int, align: int = ALIGN) -> np.ndarray:
    """A uint8 array of ``nbytes`` whose *address* (not just size) is a multiple of ``align``."""
    raw = np.empty(nbytes + align, np.uint8)
    off = (-raw.ctypes.data) % align
    out = raw[off : off + nbytes]
    assert out.ctypes.data % align == 0
    return out


@runtime_checkable
class DeviceBuffer(Protocol):
    @property
    def nbytes(self) -> int: ...

    @property
    def address(self) -> int: ...


@dataclass(frozen=True)
class BufferView:
    """A typed window (``spec`` at byte ``offset``) on a device buffer."""

    buffer: Any
    spec: ArraySpec
    offset: int = 0


class Run(Protocol):
    """A launched kernel. ``timing`` is (start, end) in ``time.perf_counter`` seconds, as the device saw it."""

    @property
    def timing(self) -> tuple[float, float]: ...


class Device(Protocol):
    name: str
    lanes: int

    def load(self, program: KernelProgram) -> None:
        """Make the program's weights resident and prepare one workspace per lane."""
        ...

    def alloc(self, nbytes: int) -> DeviceBuffer: ...

    def free(self, buf: DeviceBuffer) -> None: ...

    def host_view(self, buf: DeviceBuffer) -> np.ndarray | None:
        """Host-visible uint8 view of ``buf`` if the device can alias host memory (zero-copy), else None."""
        ...

    def to_device(self, dst: BufferView, src: np.ndarray) -> None: ...

    def from_device(self, src: BufferView, dst: np.ndarray) -> None: ...

    def launch(self, op: str, params: Mapping[str, Any], inputs: Sequence[BufferView],
               outputs: Sequence[BufferView], tensors: Mapping[str, BufferView], lane: int) -> Run:
        """Start ``op`` on ``lane``. May return before the kernel ends; errors may surface in ``wait``."""
        ...

    def wait(self, run: Run, timeout_s: float | None = None) -> bool:
        """Block (GIL-friendly) until ``run`` ends; True when done. Raises the kernel's error or DeviceError."""
        ...

    def close(self) -> None: ...
