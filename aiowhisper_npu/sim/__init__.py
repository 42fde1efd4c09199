"""A simulated AMD NPU behind a stand-in for XRT's ``pyxrt`` bindings (``backend="sim"``).

``new_pyxrt(config)`` returns a fresh module object with pyxrt's names and behaviour (see
:mod:`aiowhisper_npu.sim.pyxrt`) driving simulated devices configured by :class:`SimConfig`. The XRT
backend (:mod:`aiowhisper_npu.devices.xrt`) runs on it unchanged; on a machine with an NPU only the import
changes. ``DEFAULT_MANIFEST`` is the packaged kernel manifest for ``backend="sim"``: stem, qkv and
attn_mlp on the simulated NPU with bf16 GEMMs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from .config import FAULTS, SCALAR_MACS_PER_S, VECTOR_BF16_MACS_PER_S, SimConfig, gil_sleep
from .npu import RunRecord, SimNPU

__all__ = ["SimConfig", "SimNPU", "RunRecord", "FAULTS", "SCALAR_MACS_PER_S", "VECTOR_BF16_MACS_PER_S",
           "DATA_DIR", "DEFAULT_MANIFEST", "gil_sleep", "new_pyxrt"]

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "sim"
DEFAULT_MANIFEST = DATA_DIR / "manifest.json"


def new_pyxrt(config: SimConfig | None = None) -> ModuleType:
    """A fresh, independent ``pyxrt`` stand-in module (its own devices, contexts and classes)."""
    spec = importlib.util.find_spec("aiowhisper_npu.sim.pyxrt")
    assert spec is not None and spec.loader is not None and spec.origin is not None
    fresh = importlib.util.spec_from_file_location("pyxrt", spec.origin)
    assert fresh is not None and fresh.loader is not None
    module = importlib.util.module_from_spec(fresh)
    fresh.loader.exec_module(module)
    if config is not None:
        module.sim_configure(config)
    return module
