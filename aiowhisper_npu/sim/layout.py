"""The packed-BO layout: several weights in one buffer object, at offsets the kernel can derive.

mlir-aie builds every NPU kernel with the arguments ``opcode, instr, ninstr, bo0..bo4`` (aiecc's
``generateKernelsJson``), so a kernel takes at most :data:`MAX_DATA_BOS` data BOs. Ops that need more
weights than that take them packed into one resident BO. The layout is the contract between the host (the
kernel manifest's ``{"pack": [...]}`` argument, uploaded by :mod:`aiowhisper_npu.devices.xrt`) and the
kernel (here the simulated kernels of :mod:`aiowhisper_npu.sim.ops`):

- the parts follow each other in the listed order;
- part ``i`` starts at the first multiple of ``align`` bytes (default 64) at or after the end of part
  ``i - 1``; part 0 starts at byte 0;
- each part is stored densely, row-major, in its own dtype (bf16 as 2 bytes, fp32 as 4).

So a kernel that knows the parts' shapes (from the model dimensions in its params BO) knows every offset;
no offsets travel at run time.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["MAX_DATA_BOS", "PACK_ALIGN", "pack_offsets"]

MAX_DATA_BOS = 5  # aiecc: opcode, instr, ninstr, then bo0..bo4
PACK_ALIGN = 64  # bytes: a cache line, and the shim DMA's burst alignment


def pack_offsets(nbytes: Sequence[int], align: int = PACK_ALIGN) -> tuple[list[int], int]:
    """Byte offset of each part (sizes ``nbytes``, in order) and the packed size (a multiple of ``align``)."""
    if align < 1 or align & (align - 1):
        raise ValueError(f"pack alignment must be a power of two, got {align}")
    offsets, end = [], 0
    for n in nbytes:
        if n < 0:
            raise ValueError(f"part size must be >= 0, got {n}")
        start = -(-end // align) * align
        offsets.append(start)
        end = start + int(n)
    return offsets, -(-end // align) * align
