"""The ground floor: what a pipeline schedules, and the small protocol of the devices that run it.

It imports only numpy. The generic pipeline (:mod:`aiowhisper_npu.pipeline`), the devices
(:mod:`aiowhisper_npu.devices`) and the encoder's tile graph (:mod:`aiowhisper_npu.encoder.plan`) build on it;
it knows none of them, nothing about Whisper and nothing about asyncio.

A *tile* is one kernel launch with its host→device inputs, device→host outputs, and the job-scoped device
tensors it reads or writes. A *job* owns the host memory the tiles gather from and scatter to. A
:class:`KernelProgram` is the kernels a device runs, with the weights it keeps resident.

A :class:`Device` owns memory the host cannot assume it shares (``DeviceBuffer``), copies into and out of it,
and runs a program's ops on ``lanes`` parallel kernel workers. Every call is synchronous and thread-safe
enough for the pipeline's use: one caller per lane for ``launch``/``wait``, one caller for the copies.
``wait`` is the only call that may take long; each device makes it GIL-friendly (it either releases the GIL
or polls in short slices), and the pipeline runs it in a worker thread so the event loop never waits on a
device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = ["ArraySpec", "Tile", "Job", "KernelProgram", "slot_nbytes", "ALIGN", "aligned_empty", "DeviceBuffer",
           "BufferView", "Run", "Device"]


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of one array a tile moves or touches."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    @cached_property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True)
class Tile:
    """One kernel launch. ``deps`` are indices (in the job's tile list) that must complete first."""

    index: int
    op: str
    deps: tuple[int, ...]
    inputs: tuple[ArraySpec, ...]
    outputs: tuple[ArraySpec, ...]
    tensors: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""


class Job(Protocol):
    """A unit of work for a pipeline: a static tile graph plus the host memory it reads and fills.

    A job may also define ``activate()`` and ``release()`` (no arguments): the scheduler calls ``activate``
    when the job becomes active (its device tensors allocated; a failure fails the job) and ``release``
    when it ends, however it ends, so host working memory need only exist while the job can run.
    """

    @property
    def tiles(self) -> Sequence[Tile]: ...

    @property
    def tensor_specs(self) -> Mapping[str, ArraySpec]:
        """Job-scoped device tensors, allocated when the job starts and freed when it ends."""
        ...

    def prepare(self, tile: Tile, host_in: Sequence[np.ndarray]) -> None:
        """Host prep: gather the tile's inputs into ``host_in`` (views with ``tile.inputs``' shapes)."""
        ...

    def commit(self, tile: Tile, host_out: Sequence[np.ndarray]) -> None:
        """Scatter the tile's outputs (already copied back from the device) into the job's host memory."""
        ...


class KernelProgram(Protocol):
    """The kernels a device runs, plus the weights it keeps resident. Devices call it; it calls numpy."""

    @property
    def resident(self) -> Mapping[str, np.ndarray]: ...

    def make_workspace(self) -> Any:
        """Scratch memory for one kernel worker (one per lane)."""
        ...

    def run(self, op: str, resident: Mapping[str, np.ndarray], workspace: Any, params: Mapping[str, Any],
            inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
            tensors: Mapping[str, np.ndarray]) -> None: ...


def slot_nbytes(tiles: Sequence[Tile]) -> tuple[list[int], list[int]]:
    """Per-position input and output byte sizes that fit every tile: one buffer set per pipeline slot."""
    n_in = max((len(t.inputs) for t in tiles), default=0)
    n_out = max((len(t.outputs) for t in tiles), default=0)
    ins = [max((t.inputs[i].nbytes for t in tiles if i < len(t.inputs)), default=0) for i in range(n_in)]
    outs = [max((t.outputs[i].nbytes for t in tiles if i < len(t.outputs)), default=0) for i in range(n_out)]
    return ins, outs


# -- the device protocol --------------------------------------------------------------------------------------

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
