"""What this machine offers the runtime: backends, pyxrt, models, BLAS. Used by ``aiowhisper-npu info``."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from typing import Any

import numpy as np

from ..benchmark.harness import blas_libraries

__all__ = ["collect_info", "format_info"]


def _pyxrt() -> dict[str, Any]:
    spec = importlib.util.find_spec("pyxrt")
    if spec is None:
        return {"found": False, "path": None,
                "hint": "source /opt/xilinx/xrt/setup.sh (puts XRT's python dir on PYTHONPATH); pyxrt must be "
                        f"built for Python {sys.version_info.major}.{sys.version_info.minor}"}
    return {"found": True, "path": spec.origin}


def _bf16_decoder() -> str:
    from ..native import gemv

    if gemv is None:
        return "numpy.matmul (BLAS) on bf16-rounded operands: the few-row kernel is not built"
    if gemv.native_bf16():
        return "AVX512_BF16 vdpbf16ps few-row kernel (aiowhisper_npu.native._gemv)"
    return "few-row kernel on widened bf16 weights (aiowhisper_npu.native._gemv; AVX2 FMA or portable C)"


def collect_info() -> dict[str, Any]:
    """A JSON-able description of the backends, pyxrt, model cache, installed models and BLAS."""
    from .. import __version__, numerics
    from ..models.registry import cache_dir, installed_models

    pyxrt = _pyxrt()
    backends = {"cpu": True, "sim": True, "xrt": pyxrt["found"]}
    return {
        "version": __version__, "python": platform.python_version(), "numpy": np.__version__,
        "machine": platform.machine(), "cpus": os.cpu_count(), "backends": backends, "pyxrt": pyxrt,
        "model_cache": str(cache_dir()),
        "models": {k: (str(v) if v else None) for k, v in installed_models().items()},
        "blas": blas_libraries(),
        "element_wise": ("C (aiowhisper_npu.native._fastmath)" if numerics.native_available()
                         else "numpy (C extension not built)"),
        "linear_layers": ("packed-weight AVX-512 GEMM (aiowhisper_npu.native._gemm)" if numerics.packed_gemm_available()
                          else "numpy.matmul (BLAS): the packed GEMM is not built or this CPU lacks AVX-512"),
        "bf16_linear_layers": {"avx512bf16": "AVX512_BF16 vdpbf16ps GEMM (aiowhisper_npu.native._gemm_bf16)",
                               "fma": "AVX-512F FMA on bf16 values (aiowhisper_npu.native._gemm_bf16; this CPU "
                                      "lacks AVX512_BF16; same bits)",
                               "numpy": "numpy.matmul (BLAS) on bf16-rounded operands: the bf16 GEMM is not "
                                        "built or this CPU lacks AVX-512"}[numerics.bf16_gemm_kernel()],
        "bf16_decoder": _bf16_decoder(),
        "attention": ("fused AVX-512 kernel (aiowhisper_npu.native._attention)" if numerics.fused_attention_available()
                      else "BLAS GEMMs around the exp: the fused kernel is not built or this CPU lacks AVX-512"),
    }


def format_info(info: dict[str, Any]) -> str:
    lines = [f"aiowhisper_npu {info['version']} (Python {info['python']}, numpy {info['numpy']}, "
             f"{info['machine']}, {info['cpus']} CPUs)", "backends:"]
    for name, ok in info["backends"].items():
        lines.append(f"  {name:4} {'available' if ok else 'unavailable'}")
    px = info["pyxrt"]
    lines.append(f"pyxrt: {'found at ' + px['path'] if px['found'] else 'not found: ' + px['hint']}")
    lines.append(f"model cache: {info['model_cache']}")
    lines.append("models:")
    for name, path in info["models"].items():
        lines.append(f"  {name:8} {path or 'not installed (pip install aiowhisper-npu[models])'}")
    lines.append(f"element-wise kernels: {info['element_wise']}")
    lines.append(f"linear layers: {info['linear_layers']}")
    lines.append(f"linear layers, precision=bf16: {info['bf16_linear_layers']}")
    lines.append(f"decoder products, precision=bf16: {info['bf16_decoder']}")
    lines.append(f"attention: {info['attention']}")
    lines.append("BLAS:")
    for b in info["blas"]:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in b.items()))
    return "\n".join(lines)
