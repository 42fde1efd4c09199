"""Device memory of the XRT backend: ``host_only`` BOs, their mapped host views, and how long they live.

pyxrt's ``bo.map()`` returns a memoryview that does not own the BO (``py::memoryview::from_memory``): once
the BO is freed, a view made from it dangles. Every host view here is made from a :class:`MappedBO`,
which holds the BO, so the BO lives as long as the last view of its memory wherever a view is kept (zero-copy
staging, pool slots, host-op tensors), and :meth:`XrtDevice.free <aiowhisper_npu.devices.xrt.XrtDevice.free>`
only drops the device's own references.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..bf16 import to_bf16_bits
from ..errors import DeviceError
from ..tiles import BufferView, KernelProgram

__all__ = ["SYNC_SLICE", "MappedBO", "XrtBuffer", "chunks", "live", "typed", "weight_data"]

SYNC_SLICE = 256 << 10  # bytes per bo.sync call (~0.45 ms of GIL at Phoenix's measured sync rate)


class MappedBO:
    """A BO's mapped memory for numpy, keeping the BO alive while any view of it exists.

    pyxrt's ``bo.map()`` memoryview does not own the BO: once the BO is freed, a view made from it dangles.
    Arrays made from this object (``np.asarray``) have it as their base, so the BO lives as long as the last
    view of its memory, wherever a view is kept (zero-copy staging, pool slots, host-op tensors).
    """

    __slots__ = ("bo", "view", "__array_interface__")

    def __init__(self, bo: Any, nbytes: int):
        self.bo = bo
        self.view = bo.map()
        addr = np.frombuffer(self.view, np.uint8).ctypes.data
        self.__array_interface__ = {"version": 3, "shape": (nbytes,), "typestr": "|u1", "data": (addr, False)}


class XrtBuffer:
    """Device memory: one ``host_only`` BO, with coherence flags for job tensors shared by NPU and host."""

    __slots__ = ("bo", "nbytes", "host", "freed", "dev_dirty", "host_dirty")

    def __init__(self, bo: Any, nbytes: int):
        self.bo = bo
        self.nbytes = nbytes
        self.host = np.asarray(MappedBO(bo, max(nbytes, 1)))[:nbytes]
        self.freed = False
        self.dev_dirty = False  # the NPU wrote it since the host last synced from the device
        self.host_dirty = False  # the host wrote it since the last sync to the device

    @property
    def address(self) -> int:
        return int(self.bo.address())


def chunks(nbytes: int, offset: int) -> list[tuple[int, int]]:
    """(size, offset) slices of at most :data:`SYNC_SLICE` bytes covering ``nbytes`` from ``offset``."""
    return [(min(SYNC_SLICE, nbytes - o), offset + o) for o in range(0, nbytes, SYNC_SLICE)] or [(0, offset)]


def live(buf: XrtBuffer) -> XrtBuffer:
    """``buf``, or :class:`DeviceError` if it was freed."""
    if buf.freed:
        raise DeviceError("use of a freed device buffer")
    return buf


def typed(v: BufferView) -> np.ndarray:
    """The host view of ``v``'s bytes, with its dtype and shape."""
    return live(v.buffer).host[v.offset : v.offset + v.spec.nbytes].view(v.spec.dtype).reshape(v.spec.shape)


def weight_data(program: KernelProgram, name: str, dtype: str) -> np.ndarray:
    """A resident weight as uploaded: float32, or bf16 bit patterns (rounded to nearest even)."""
    arr = np.ascontiguousarray(program.resident[name], np.float32)
    return to_bf16_bits(arr) if dtype == "bf16" else arr
