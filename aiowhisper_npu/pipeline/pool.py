"""A bounded pool of buffer sets, one per in-flight pipeline slot.

Each slot owns its own device input/output buffers and host staging buffers, all at 64-byte aligned
addresses. A slot belongs to exactly one tile from host prep until its outputs are committed, so two
in-flight tiles can never share a buffer (the defect of the report this project grew from). The number of
slots *is* the pipeline depth: :meth:`BufferPool.acquire` waits while every slot is in flight.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import anyio
import numpy as np

from ..tiles import ArraySpec, BufferView, Device, Tile, aligned_empty

__all__ = ["PoolStats", "Slot", "BufferPool"]


class PoolStats(NamedTuple):
    """A snapshot of the pool's counters."""

    slots: int
    allocations: int  # device buffers allocated since the pool was made
    reuses: int  # acquisitions served by an already-allocated slot
    in_use: int  # slots currently held by in-flight tiles
    high_water: int  # most slots ever in use at once
    bytes_per_slot: int


class Slot:
    """One in-flight tile's buffers: device inputs/outputs and their host staging.

    The typed views a tile needs are made once per (buffers, tile shapes) and reused: tiles of one plan
    share a handful of shapes, and making views is a measurable part of the per-tile overhead.
    """

    def __init__(self, index: int):
        self.index = index
        self._views: dict[tuple[str, tuple[ArraySpec, ...]], list[Any]] = {}
        self.set_buffers([], [], [], [])

    def set_buffers(self, dev_in: list[Any], dev_out: list[Any], host_in: list[np.ndarray],
                    host_out: list[np.ndarray]) -> None:
        self.dev_in, self.dev_out, self.host_in, self.host_out = dev_in, dev_out, host_in, host_out
        self._views = {}

    def _cached(self, kind: str, specs: tuple[ArraySpec, ...]) -> list[Any]:
        views = self._views.get((kind, specs))
        if views is None:
            if kind == "host_in":
                views = [_typed(b, s) for b, s in zip(self.host_in, specs)]
            elif kind == "host_out":
                views = [_typed(b, s) for b, s in zip(self.host_out, specs)]
            else:
                bufs = self.dev_in if kind == "dev_in" else self.dev_out
                views = [BufferView(b, s) for b, s in zip(bufs, specs)]
            self._views[(kind, specs)] = views
        return views

    def host_inputs(self, tile: Tile) -> list[np.ndarray]:
        return self._cached("host_in", tile.inputs)

    def host_outputs(self, tile: Tile) -> list[np.ndarray]:
        return self._cached("host_out", tile.outputs)

    def device_inputs(self, tile: Tile) -> list[BufferView]:
        return self._cached("dev_in", tile.inputs)

    def device_outputs(self, tile: Tile) -> list[BufferView]:
        return self._cached("dev_out", tile.outputs)


def _typed(raw: np.ndarray, spec: ArraySpec) -> np.ndarray:
    return raw[: spec.nbytes].view(spec.dtype).reshape(spec.shape)


class BufferPool:
    """``slots`` pre-allocated buffer sets sized for the largest tile (see module docstring).

    ``reuse=False`` allocates fresh buffers for every tile and frees them after (the benchmark's naive
    baseline). ``zero_copy=True`` stages host data directly in device memory when the device allows it.
    """

    def __init__(self, device: Device, in_sizes: Sequence[int], out_sizes: Sequence[int], slots: int, *,
                 zero_copy: bool = False, reuse: bool = True):
        if slots < 1:
            raise ValueError(f"slots (pipeline depth) must be >= 1, got {slots}")
        self._device = device
        self._in_sizes = list(in_sizes)
        self._out_sizes = list(out_sizes)
        self._zero_copy = zero_copy
        self._reuse = reuse
        self._slots = [Slot(i) for i in range(slots)]
        self._free = list(reversed(self._slots))
        self._sem = anyio.Semaphore(slots)
        self._allocations = 0
        self._reuses = 0
        self._high_water = 0
        self._closed = False
        if reuse:
            for s in self._slots:
                self._fill(s)

    # -- allocation -----------------------------------------------------------------------------------
    def _fill(self, s: Slot) -> None:
        dev_in = [self._alloc(n) for n in self._in_sizes]
        dev_out = [self._alloc(n) for n in self._out_sizes]
        s.set_buffers(dev_in, dev_out, [self._staging(b) for b in dev_in], [self._staging(b) for b in dev_out])

    def _alloc(self, nbytes: int) -> Any:
        self._allocations += 1
        return self._device.alloc(max(nbytes, 1))

    def _staging(self, buf: Any) -> np.ndarray:
        if self._zero_copy:
            view = self._device.host_view(buf)
            if view is not None:
                return view
        return aligned_empty(buf.nbytes)

    def _drain(self, s: Slot) -> None:
        for b in (*s.dev_in, *s.dev_out):
            self._device.free(b)
        s.set_buffers([], [], [], [])

    # -- lifecycle ------------------------------------------------------------------------------------
    async def acquire(self) -> Slot:
        """Wait for a free slot (at most ``slots`` tiles are ever in flight)."""
        if self._closed:
            raise RuntimeError("buffer pool is closed")
        await self._sem.acquire()
        return self._take()

    def acquire_nowait(self) -> Slot | None:
        """A free slot at once, or None when every slot is in flight."""
        if self._closed:
            raise RuntimeError("buffer pool is closed")
        try:
            self._sem.acquire_nowait()
        except anyio.WouldBlock:
            return None
        return self._take()

    def _take(self) -> Slot:
        s = self._free.pop()
        if self._reuse:
            self._reuses += 1
        else:
            self._fill(s)
        self._high_water = max(self._high_water, self.in_use)
        return s

    def release(self, s: Slot) -> None:
        """Return a slot. Idempotence is the caller's job: releasing a free slot is a bug and raises."""
        if s in self._free:
            raise RuntimeError(f"slot {s.index} released twice")
        if not self._reuse:
            self._drain(s)
        self._free.append(s)
        self._sem.release()

    def close(self) -> None:
        """Free every device buffer. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for s in self._slots:
            self._drain(s)

    # -- introspection --------------------------------------------------------------------------------
    @property
    def in_use(self) -> int:
        return len(self._slots) - len(self._free)

    @property
    def slots(self) -> int:
        return len(self._slots)

    def stats(self) -> PoolStats:
        return PoolStats(len(self._slots), self._allocations, self._reuses, self.in_use, self._high_water,
                         sum(self._in_sizes) + sum(self._out_sizes))

    def addresses(self) -> list[int]:
        """Every device and staging buffer address currently held (for alignment/sharing checks)."""
        out = []
        for s in self._slots:
            out += [b.address for b in (*s.dev_in, *s.dev_out)]
            out += [int(h.ctypes.data) for h in (*s.host_in, *s.host_out)]
        return out
