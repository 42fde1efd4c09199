"""The device protocol; it lives in :mod:`aiowhisper_npu.tiles`."""

from ..tiles import ALIGN, BufferView, Device, DeviceBuffer, Run, aligned_empty

__all__ = ["ALIGN", "aligned_empty", "DeviceBuffer", "BufferView", "Run", "Device"]
