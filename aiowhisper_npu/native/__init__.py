"""Optional C kernels built by ``pip install`` (setup.py): fused element-wise passes (``_fastmath``), the
packed-weight GEMM (``_gemm``; ``_gemm_bf16`` for precision="bf16") and fused attention (``_attention``), the
decoder's few-row products (``_gemv``). Python code imports them guardedly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers only: the extension modules have no stubs, so each is typed as Any

    def __getattr__(name: str) -> Any: ...
