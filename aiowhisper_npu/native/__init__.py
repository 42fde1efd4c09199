"""Optional C kernels built by ``pip install`` (setup.py), each ``None`` when it was not built: ``fastmath``
(fused element-wise passes), ``gemm`` (the packed-weight GEMM), ``gemm_bf16`` (its precision="bf16" form),
``attention`` (fused attention) and ``gemv`` (the decoder's few-row products). The rest of the package uses
these names, never the ``_``-prefixed extension modules themselves. The AVX-512 ones (``gemm``, ``gemm_bf16``,
``attention``) also say with ``available()`` whether this CPU runs them."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["fastmath", "gemm", "gemm_bf16", "attention", "gemv"]


def _optional(name: str) -> Any:
    """The extension module ``name`` of this package, or None when it was not built."""
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:
        return None


fastmath: Any = _optional("_fastmath")
gemm: Any = _optional("_gemm")
gemm_bf16: Any = _optional("_gemm_bf16")
attention: Any = _optional("_attention")
gemv: Any = _optional("_gemv")
