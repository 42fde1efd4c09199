"""What a pipeline schedules: tiles, their dependencies, and the jobs that own them.

This module is generic: it knows nothing about Whisper (see :mod:`aiowhisper_npu.encoder.plan`) and nothing about
asyncio (see :mod:`aiowhisper_npu.pipeline.pipeline`). A *tile* is one kernel launch with its host→device inputs,
device→host outputs, and the job-scoped device tensors it reads or writes. A *job* owns the host memory the
tiles gather from and scatter to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

__all__ = ["ArraySpec", "Tile", "Job", "KernelProgram", "slot_nbytes"]


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
