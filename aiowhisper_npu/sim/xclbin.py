"""The simulated NPU's "xclbin": a small JSON file describing the kernels it provides.

A real xclbin is an AXLF binary holding the AIE configuration and ``kernels.json``; the stand-in keeps only
what the simulation needs. Schema (``format`` and ``version`` are required)::

    {
      "format": "aiowhisper-sim-xclbin", "version": 1,
      "uuid": "5e2d7e0c-0f5b-4c4b-9b59-6a9d3a000001",     # what xclbin.get_uuid() returns
      "xsa_name": "sim_npu1",                              # optional
      "kernels": [{
        "name": "whisper_qkv",          # xrt.kernel(ctx, name)
        "op": "qkv",                    # free text; SimConfig.op_time_s may key on it
        "impl": "encoder.qkv",          # a built-in (see sim.ops.BUILTINS) or "package.module:attribute"
        "precision": "bf16",            # default precision of the read arguments: "bf16" or "fp32"
        "timing": {"base_s": 2e-6, "macs_per_s": 2.56e11},  # or {"fixed_s": 0.002}; "macs": N
                                        # overrides the implementation's own MAC count
        "ninstr": "words",              # the unit of the instruction count its firmware expects: "words"
                                        # (default, mlir-aie's examples) or "bytes" (its newer host runtime)
        "args": [                        # the data BOs after (opcode, instr, ninstr), i.e. bo0, bo1, ...
          {"name": "params", "dtype": "int32", "access": "read", "fields": ["r0", "n", "layer"]},
          {"name": "x", "dtype": "float32", "access": "read", "precision": "bf16"},
          {"name": "w", "dtype": "packed", "access": "read", "parts": [    # several weights in one BO
            {"name": "qkv_w", "dtype": "bfloat16"},                         # (sim.layout: offsets)
            {"name": "qkv_b", "dtype": "float32", "precision": "fp32"}]},
          {"name": "qkv", "dtype": "float32", "access": "write"}
        ]
      }]
    }

Every kernel follows the mlir-aie calling convention, exactly as aiecc declares it: argument 0 is the opcode
(3), 1 the instruction BO (group 1), 2 the instruction count, then five data BOs ``bo0..bo4``, so
``get_num_args()`` is always 8 (:data:`~aiowhisper_npu.sim.layout.MAX_DATA_BOS` + 3). ``args`` lists the data
BOs the kernel uses, at most five: data argument ``i`` is argument ``3 + i`` and its group id is ``3 + i``
unless it declares ``"group"``; the remaining slots are unused and need not be passed. Read arguments are
converted with their precision before the kernel sees them: ``bfloat16`` data is widened exactly, and
``float32`` data read at ``bf16`` precision is rounded to nearest even; write arguments are ``float32`` or
integer memory the kernel writes in place. A ``packed`` argument holds its ``parts`` (read-only ``bfloat16``
or ``float32``, each with its own precision) at the offsets of :func:`~aiowhisper_npu.sim.layout.pack_offsets`
(``"align"``, default 64 bytes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .layout import MAX_DATA_BOS, PACK_ALIGN

__all__ = ["FORMAT", "DTYPES", "NINSTR_UNITS", "ArgDesc", "KernelDesc", "XclbinDesc", "parse_xclbin"]

FORMAT = "aiowhisper-sim-xclbin"
DTYPES = {"int32": "int32", "uint32": "uint32", "int8": "int8", "uint8": "uint8", "float32": "float32",
          "bfloat16": "uint16", "packed": "uint8"}
NINSTR_UNITS = ("words", "bytes")
_ACCESS = ("read", "write", "readwrite")
_PRECISION = ("bf16", "fp32")


@dataclass(frozen=True)
class ArgDesc:
    """One data argument (a BO) of a simulated kernel."""

    name: str
    dtype: str
    access: str
    precision: str
    group: int
    fields: tuple[str, ...] = ()
    parts: tuple[ArgDesc, ...] = ()  # a packed argument's weights, in layout order
    align: int = PACK_ALIGN

    @property
    def reads(self) -> bool:
        return self.access in ("read", "readwrite")

    @property
    def writes(self) -> bool:
        return self.access in ("write", "readwrite")


@dataclass(frozen=True)
class KernelDesc:
    """One kernel of a simulated xclbin."""

    name: str
    op: str
    impl: str
    precision: str
    args: tuple[ArgDesc, ...]
    base_s: float = 0.0
    macs_per_s: float | None = None
    fixed_s: float | None = None
    macs: float | None = None  # MACs per run, when the implementation does not count them
    ninstr: str = "words"  # the unit of the instruction count the firmware expects

    @property
    def num_args(self) -> int:
        """Always 8, as aiecc declares every kernel: opcode, instr, ninstr and ``bo0..bo4``."""
        return 3 + MAX_DATA_BOS

    def group_id(self, argno: int) -> int:
        if argno == 1:
            return 1
        if argno in (0, 2):
            return -1
        i = argno - 3
        return self.args[i].group if i < len(self.args) else argno


@dataclass(frozen=True)
class XclbinDesc:
    path: str
    uuid: str
    xsa_name: str
    kernels: tuple[KernelDesc, ...]

    def kernel(self, name: str) -> KernelDesc | None:
        base = name.split(":", 1)[0]
        return next((k for k in self.kernels if k.name == base), None)


class _Invalid(Exception):
    pass


def _req(d: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise _Invalid(f"{where}: missing '{key}'")
    if not isinstance(d[key], kind) or (isinstance(d[key], bool) and kind is not bool):
        raise _Invalid(f"{where}: '{key}' has the wrong type")
    return d[key]


def _arg(i: int, a: Any, precision: str, where: str) -> ArgDesc:
    if not isinstance(a, dict):
        raise _Invalid(f"{where} arg {i}: not an object")
    name = _req(a, "name", str, f"{where} arg {i}")
    dtype = _req(a, "dtype", str, f"{where} arg {name!r}")
    if dtype not in DTYPES:
        raise _Invalid(f"{where} arg {name!r}: dtype must be one of {sorted(DTYPES)}")
    access = a.get("access", "read")
    if access not in _ACCESS:
        raise _Invalid(f"{where} arg {name!r}: access must be one of {_ACCESS}")
    prec = a.get("precision", precision if dtype in ("float32", "bfloat16") else "fp32")
    if prec not in _PRECISION:
        raise _Invalid(f"{where} arg {name!r}: precision must be one of {_PRECISION}")
    if dtype in ("bfloat16", "packed") and access != "read":
        raise _Invalid(f"{where} arg {name!r}: {dtype} arguments must be read-only")
    fields = a.get("fields", [])
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise _Invalid(f"{where} arg {name!r}: 'fields' must be a list of names")
    group = a.get("group", 3 + i)
    if not isinstance(group, int):
        raise _Invalid(f"{where} arg {name!r}: 'group' must be an int")
    if ("parts" in a or "align" in a) != (dtype == "packed"):
        raise _Invalid(f"{where} arg {name!r}: 'parts' (and 'align') go with dtype 'packed', and only there")
    parts: tuple[ArgDesc, ...] = ()
    align = a.get("align", PACK_ALIGN)
    if dtype == "packed":
        raw = a.get("parts")
        if not isinstance(raw, list) or not raw:
            raise _Invalid(f"{where} arg {name!r}: 'parts' must be a non-empty list")
        parts = tuple(_arg(j, p, precision, f"{where} arg {name!r} part") for j, p in enumerate(raw))
        if any(p.dtype not in ("bfloat16", "float32") or p.access != "read" for p in parts):
            raise _Invalid(f"{where} arg {name!r}: parts are read-only bfloat16 or float32")
        if len({p.name for p in parts}) != len(parts):
            raise _Invalid(f"{where} arg {name!r}: duplicate part names")
        if not isinstance(align, int) or isinstance(align, bool) or align < 1 or align & (align - 1):
            raise _Invalid(f"{where} arg {name!r}: 'align' must be a power of two")
    return ArgDesc(name, dtype, access, prec, group, tuple(fields), parts, align)


def _kernel(k: Any, i: int) -> KernelDesc:
    if not isinstance(k, dict):
        raise _Invalid(f"kernel {i}: not an object")
    name = _req(k, "name", str, f"kernel {i}")
    where = f"kernel {name!r}"
    precision = k.get("precision", "fp32")
    if precision not in _PRECISION:
        raise _Invalid(f"{where}: precision must be one of {_PRECISION}")
    args = tuple(_arg(j, a, precision, where) for j, a in enumerate(_req(k, "args", list, where)))
    if len({a.name for a in args}) != len(args):
        raise _Invalid(f"{where}: duplicate argument names")
    if len(args) > MAX_DATA_BOS:
        raise _Invalid(f"{where}: {len(args)} data arguments, but an aiecc kernel has {MAX_DATA_BOS} "
                       "(opcode, instr, ninstr, bo0..bo4)")
    ninstr = k.get("ninstr", "words")
    if ninstr not in NINSTR_UNITS:
        raise _Invalid(f"{where}: 'ninstr' must be one of {NINSTR_UNITS}")
    timing = k.get("timing", {})
    if not isinstance(timing, dict) or not all(isinstance(v, (int, float)) for v in timing.values()):
        raise _Invalid(f"{where}: 'timing' must map names to numbers")
    unknown = set(timing) - {"base_s", "macs_per_s", "fixed_s", "macs"}
    if unknown:
        raise _Invalid(f"{where}: unknown timing keys {sorted(unknown)}")
    return KernelDesc(name, str(k.get("op", name)), _req(k, "impl", str, where), precision, args,
                      float(timing.get("base_s", 0.0)),
                      float(timing["macs_per_s"]) if "macs_per_s" in timing else None,
                      float(timing["fixed_s"]) if "fixed_s" in timing else None,
                      float(timing["macs"]) if "macs" in timing else None, ninstr)


def parse_xclbin(path: str) -> XclbinDesc:
    """Read a simulated xclbin, raising RuntimeError with XRT's messages for missing or bad files."""
    if path == "":
        raise RuntimeError("No xclbin specified")
    p = Path(path)
    if not p.is_file():
        raise RuntimeError(f"No such file '{path}'" if p.is_absolute() else f"No such file or directory '{path}'")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RuntimeError("Invalid xclbin") from None
    try:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != 1:
            raise _Invalid(f"not an {FORMAT} version 1 file")
        kernels = tuple(_kernel(k, i) for i, k in enumerate(_req(doc, "kernels", list, "xclbin")))
        if len({k.name for k in kernels}) != len(kernels):
            raise _Invalid("duplicate kernel names")
        return XclbinDesc(str(p.resolve()), _req(doc, "uuid", str, "xclbin"), str(doc.get("xsa_name", "sim")),
                          kernels)
    except _Invalid as exc:
        raise RuntimeError(f"Invalid xclbin: {exc}") from None
