"""Devices behind one small protocol (:class:`aiowhisper_npu.tiles.Device`): ``cpu``, ``xrt`` (real NPU) and
``sim`` (stand-in). They import the protocol and the simulated NPU, never the pipeline that drives them."""

from __future__ import annotations

from typing import Any, cast

from ..errors import BackendUnavailable
from ..tiles import ALIGN, BufferView, Device, DeviceBuffer, Run, aligned_empty
from .cpu import CpuDevice

__all__ = ["ALIGN", "BACKENDS", "BufferView", "CpuDevice", "Device", "DeviceBuffer", "Run", "aligned_empty",
           "make_device"]

BACKENDS = ("cpu", "sim", "xrt")


def make_device(backend: str, *, lanes: int = 1, **options: Any) -> Device:
    """Build the device for ``backend``. Raises :class:`BackendUnavailable` when it cannot run here."""
    if backend == "cpu":
        return cast(Device, CpuDevice(lanes, **options))  # its methods take its own buffer type
    if backend in ("xrt", "sim"):
        try:
            from .xrt import make_xrt_device
        except ImportError as exc:  # the xrt backend module itself is missing from this build
            raise BackendUnavailable(f"backend {backend!r} is not available in this build: {exc}") from exc
        return cast(Device, make_xrt_device(backend, lanes=lanes, **options))
    raise BackendUnavailable(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
