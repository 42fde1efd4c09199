"""bfloat16 as numpy sees it: uint16 bit patterns, with IEEE round-to-nearest-even from float32.

Shared by the CPU kernels (``precision="bf16"``), the decoder, the XRT backend and the simulated NPU.

numpy has no bfloat16 dtype, so bf16 data lives in ``uint16`` arrays holding the upper half of a float32.
Rounding is round-to-nearest, ties-to-even (what AIE-ML's ``float -> bfloat16`` conversion does); NaNs stay
(quiet) NaNs and never round into infinities.
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_bf16_bits", "from_bf16_bits", "round_bf16"]


def to_bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (``uint16``), round-to-nearest-even."""
    f = np.ascontiguousarray(a, dtype=np.float32)
    u = f.view(np.uint32)
    bias = (u >> np.uint32(16)) & np.uint32(1)
    bias += np.uint32(0x7FFF)
    r = u + bias  # wraps only for NaN payloads, fixed below
    r >>= np.uint32(16)
    res = r.astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        res[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x40)).astype(np.uint16)  # keep it a quiet NaN
    return res


def from_bf16_bits(b: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (``uint16``) -> float32 (exact)."""
    return (np.ascontiguousarray(b, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def round_bf16(a: np.ndarray) -> np.ndarray:
    """A float32 copy of ``a`` rounded to the nearest bf16 value (ties to even)."""
    f = np.ascontiguousarray(a, dtype=np.float32)
    u = f.view(np.uint32)
    r = (u >> np.uint32(16)) & np.uint32(1)
    r += np.uint32(0x7FFF)
    r += u
    r &= np.uint32(0xFFFF0000)
    out = r.view(np.float32)
    nan = np.isnan(f)
    if nan.any():
        out[nan] = np.nan
    return out.reshape(f.shape)
