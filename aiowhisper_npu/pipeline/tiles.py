"""Tiles, jobs and kernel programs; they live in :mod:`aiowhisper_npu.tiles`."""

from ..tiles import ArraySpec, Job, KernelProgram, Tile, slot_nbytes

__all__ = ["ArraySpec", "Tile", "Job", "KernelProgram", "slot_nbytes"]
