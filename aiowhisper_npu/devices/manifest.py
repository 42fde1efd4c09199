"""The kernel manifest: which compiled NPU kernel runs each tile op, and how its arguments are laid out.

A manifest is a JSON file (paths inside it are relative to the file)::

    {
      "format": "aiowhisper-npu-manifest",
      "version": 1,
      "ops": {
        "qkv": {
          "xclbin": "whisper_encoder.xclbin",   # the xclbin holding the kernel
          "kernel": "whisper_qkv",              # xrt.kernel(ctx, name)
          "insts": "qkv.insts.bin",             # instruction stream: .bin (uint32 LE) or .txt (hex words)
          "ninstr": "words",                    # unit of the instruction count passed: "words" or "bytes"
          "tile_rows": 64,                      # rows per tile it was built for, or "any"
          "args": [                             # the kernel's data BOs bo0..bo4, in order (at most 5)
            {"params": ["r0", "n", "layer", "n_audio_head", "n_audio_state"]},
            {"input": 0, "dtype": "fp32"},
            {"pack": [{"weight": "{layer}.qkv_w", "dtype": "bf16"},
                      {"weight": "{layer}.qkv_b", "dtype": "fp32"}]},
            {"tensor": 0, "dtype": "fp32", "access": "write"}
          ]
        }
      }
    }

Argument sources (exactly one per entry):

- ``{"params": [names]}``: an int32 word per name, written for every launch into a small per-run BO. A name
  is a tile parameter (``r0``, ``n``, ``layer``, ``final``; booleans become 0/1) or a program constant
  (the model dimensions ``n_mels``, ``n_audio_ctx``, ``n_audio_state``, ``n_audio_head``,
  ``n_audio_layer``, ``head_dim``, ``n_mlp``, and ``tile_rows``).
- ``{"input": i}`` / ``{"output": i}``: the tile's ``i``-th input / output buffer (the pipeline slot's BO).
- ``{"tensor": i, "access": "read"|"write"|"readwrite"}``: the tile's ``i``-th job tensor (e.g. the
  per-window Q/K/V); ``access`` (default ``readwrite``) drives the host/device coherence syncs.
- ``{"weight": pattern}``: a resident weight. ``{name}`` placeholders are filled from the tile parameters,
  so ``"{layer}.qkv_w"`` names one BO per layer. Every matching weight is uploaded once, at start-up, and
  stays resident.
- ``{"pack": [{"weight": pattern, "dtype": ...}, ...], "align": 64}``: several resident weights in one BO,
  at the offsets of :func:`aiowhisper_npu.sim.layout.pack_offsets` (in order, each part at the next multiple
  of ``align`` bytes), which a kernel derives from the shapes it knows. One BO per binding of the
  placeholders (e.g. one per layer), uploaded once at start-up.

``dtype`` is ``fp32`` (default) or ``bf16`` (weights only: rounded to nearest even once, at upload). Tile
data is fp32 because the pipeline stages fp32. ``int8`` is rejected: quantized kernels need scales this
format does not carry yet. Ops the manifest does not name run on the host CPU kernels.

mlir-aie's aiecc builds every kernel as ``opcode, instr, ninstr, bo0..bo4``: at most five data BOs. Passing
fewer than the kernel declares is fine; more is fatal inside XRT, so the backend refuses at start-up an op
whose ``args`` outnumber ``get_num_args() - 3``. ``ninstr`` is the unit of the instruction count
(``words``, the default, as mlir-aie's examples; ``bytes``, as its newer host runtime): XRT passes it
unchecked, so it must match how the kernel's firmware was built.

Every problem (schema, unknown op, missing file, xclbin or kernel, too many BOs, unsupported dtype,
``tile_rows`` mismatch, weight pattern matching nothing) raises :class:`ManifestError`, a
:class:`~aiowhisper_npu.errors.BackendUnavailable`, at start-up: when the device is made or loaded.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..errors import BackendUnavailable

__all__ = ["FORMAT", "ManifestError", "ArgSpec", "OpSpec", "Manifest", "load_manifest", "read_insts",
           "weight_names", "pack_instances", "program_constants", "program_ops", "check_program", "TILE_PARAMS",
           "NINSTR_UNITS"]

FORMAT = "aiowhisper-npu-manifest"
TILE_PARAMS = ("r0", "n", "layer", "final")
NINSTR_UNITS = ("words", "bytes")
_DTYPES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "int8": "int8"}
_SOURCES = ("params", "input", "output", "tensor", "weight", "pack")
_ACCESS = ("read", "write", "readwrite")


class ManifestError(BackendUnavailable):
    """The kernel manifest (or an xclbin, kernel or instruction file it names) is unusable."""


@dataclass(frozen=True)
class ArgSpec:
    """One data argument of a kernel: where its BO comes from."""

    source: str  # params | input | output | tensor | weight | pack
    index: int = 0
    pattern: str = ""
    fields: tuple[str, ...] = ()
    dtype: str = "fp32"
    access: str = "readwrite"
    parts: tuple[tuple[str, str], ...] = ()  # pack: (weight pattern, dtype) in layout order
    align: int = 0  # pack: the alignment of its parts (bytes)

    @property
    def device_writes(self) -> bool:
        return self.source == "output" or (self.source == "tensor" and self.access != "read")

    @cached_property
    def placeholders(self) -> tuple[str, ...]:
        """The ``{name}`` placeholders of a weight pattern or of a pack's parts, in order of appearance."""
        patterns = [self.pattern] if self.source == "weight" else [p for p, _ in self.parts]
        return tuple(dict.fromkeys(n for p in patterns for n in re.findall(r"\{(\w+)\}", p)))


@dataclass(frozen=True)
class OpSpec:
    op: str
    xclbin: Path
    kernel: str
    insts: Path
    tile_rows: int | None  # None = any
    args: tuple[ArgSpec, ...]
    ninstr: str = "words"  # unit of the instruction count: words | bytes


@dataclass(frozen=True)
class Manifest:
    path: Path
    ops: Mapping[str, OpSpec]

    @property
    def xclbins(self) -> list[Path]:
        return sorted({o.xclbin for o in self.ops.values()})


def _fail(path: Path, where: str, msg: str) -> ManifestError:
    return ManifestError(f"bad kernel manifest {path}: {where}: {msg} (schema: docs/manifest.md)")


def _dtype(path: Path, where: str, raw: Mapping[str, Any]) -> str:
    dtype = _DTYPES.get(raw.get("dtype", "fp32"))
    if dtype is None:
        raise _fail(path, where, f"dtype {raw.get('dtype')!r} is not one of fp32, bf16, int8")
    if dtype == "int8":
        raise _fail(path, where, "int8 is not supported: quantized kernels need per-tensor/per-channel scales, "
                                 "which this manifest format does not carry; use bf16 or fp32")
    return dtype


def _pack(path: Path, where: str, raw: Mapping[str, Any]) -> ArgSpec:
    unknown = set(raw) - {"pack", "align"}
    if unknown:
        raise _fail(path, where, f"unknown keys {sorted(unknown)} (a pack's parts carry their own dtype)")
    parts = raw["pack"]
    if not isinstance(parts, list) or not parts:
        raise _fail(path, where, "'pack' must be a non-empty list of {\"weight\": pattern, \"dtype\": ...}")
    out = []
    for j, part in enumerate(parts):
        pw = f"{where} part {j}"
        if not isinstance(part, dict) or not isinstance(part.get("weight"), str) or not part["weight"] \
                or set(part) - {"weight", "dtype"}:
            raise _fail(path, pw, "a part must be {\"weight\": pattern, \"dtype\": \"bf16\"|\"fp32\"}")
        out.append((part["weight"], _dtype(path, pw, part)))
    from ..sim.layout import PACK_ALIGN  # the layout's home; imported here so ``import aiowhisper_npu`` stays lean

    align = raw.get("align", PACK_ALIGN)
    if not isinstance(align, int) or isinstance(align, bool) or align < 1 or align & (align - 1):
        raise _fail(path, where, f"'align' must be a power of two, got {align!r}")
    return ArgSpec("pack", dtype="mixed", parts=tuple(out), align=align)


def _arg(path: Path, where: str, raw: Any) -> ArgSpec:
    if not isinstance(raw, dict):
        raise _fail(path, where, "an argument must be an object")
    src = [k for k in _SOURCES if k in raw]
    if len(src) != 1:
        raise _fail(path, where, f"an argument needs exactly one of {', '.join(_SOURCES)}; got {sorted(raw)}")
    if src[0] == "pack":
        return _pack(path, where, raw)
    unknown = set(raw) - set(_SOURCES) - {"dtype", "access"}
    if unknown:
        raise _fail(path, where, f"unknown keys {sorted(unknown)}")
    kind, val = src[0], raw[src[0]]
    dtype = _dtype(path, where, raw)
    if dtype == "bf16" and kind != "weight":
        raise _fail(path, where, "only weights may be bf16 (the pipeline stages tile data as fp32)")
    access = raw.get("access", "readwrite")
    if access not in _ACCESS or ("access" in raw and kind != "tensor"):
        raise _fail(path, where, f"'access' ({access!r}) is only for tensors, one of {_ACCESS}")
    if kind == "params":
        if not isinstance(val, list) or not val or not all(isinstance(f, str) for f in val):
            raise _fail(path, where, "'params' must be a non-empty list of names")
        return ArgSpec("params", fields=tuple(val), dtype="int32")
    if kind == "weight":
        if not isinstance(val, str) or not val:
            raise _fail(path, where, "'weight' must be a name or pattern like \"{layer}.qkv_w\"")
        return ArgSpec("weight", pattern=val, dtype=dtype)
    if not isinstance(val, int) or isinstance(val, bool) or val < 0:
        raise _fail(path, where, f"'{kind}' must be a non-negative index")
    return ArgSpec(kind, index=val, dtype=dtype, access=access)


def _file(path: Path, where: str, doc: Mapping[str, Any], key: str) -> Path:
    val = doc.get(key)
    if not isinstance(val, str) or not val:
        raise _fail(path, where, f"'{key}' must be a file name")
    f = (path.parent / val).resolve()
    if not f.is_file():
        raise _fail(path, where, f"{key} file {f} does not exist")
    return f


def _op(path: Path, op: str, doc: Any) -> OpSpec:
    where = f"op {op!r}"
    if not isinstance(doc, dict):
        raise _fail(path, where, "must be an object")
    unknown = set(doc) - {"xclbin", "kernel", "insts", "ninstr", "tile_rows", "args", "description"}
    if unknown:
        raise _fail(path, where, f"unknown keys {sorted(unknown)}")
    ninstr = doc.get("ninstr", "words")
    if ninstr not in NINSTR_UNITS:
        raise _fail(path, where, f"'ninstr' must be one of {NINSTR_UNITS} (the unit the kernel's firmware "
                                 f"counts instructions in), got {ninstr!r}")
    kernel = doc.get("kernel")
    if not isinstance(kernel, str) or not kernel:
        raise _fail(path, where, "'kernel' must be the kernel's name in the xclbin")
    rows = doc.get("tile_rows", "any")
    if rows != "any" and (not isinstance(rows, int) or isinstance(rows, bool) or rows < 1):
        raise _fail(path, where, f"'tile_rows' must be a positive int or \"any\", got {rows!r}")
    args = doc.get("args")
    if not isinstance(args, list) or not args:
        raise _fail(path, where, "'args' must be a non-empty list")
    specs = tuple(_arg(path, f"{where} arg {i}", a) for i, a in enumerate(args))
    insts = _file(path, where, doc, "insts")
    read_insts(insts, path)
    return OpSpec(op, _file(path, where, doc, "xclbin"), kernel, insts, None if rows == "any" else rows, specs,
                  ninstr)


def load_manifest(path: str | Path) -> Manifest:
    """Parse and check a manifest file (files it names must exist). Raises :class:`ManifestError`."""
    p = Path(path).expanduser().resolve()
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"kernel manifest {p} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"kernel manifest {p} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != 1:
        raise _fail(p, "top level", f"needs \"format\": \"{FORMAT}\" and \"version\": 1")
    ops = doc.get("ops")
    if not isinstance(ops, dict) or not ops:
        raise _fail(p, "top level", "'ops' must map op names to kernels")
    return Manifest(p, {str(op): _op(p, str(op), spec) for op, spec in ops.items()})


def read_insts(path: Path, manifest: Path | None = None) -> np.ndarray:
    """An instruction stream as uint32 words: ``.bin`` is raw little-endian, ``.txt`` one hex word a line."""
    where = f"instruction file {path}"
    try:
        if path.suffix == ".txt":
            words = [int(line, 16) for line in path.read_text().split() if line.strip()]
            if any(not 0 <= w < 2**32 for w in words):
                raise ValueError("word out of uint32 range")
            data = np.asarray(words, dtype=np.uint32)
        else:
            raw = path.read_bytes()
            if len(raw) % 4:
                raise ValueError(f"{len(raw)} bytes is not a whole number of uint32 words")
            data = np.frombuffer(raw, dtype="<u4").astype(np.uint32)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{where} is unreadable: {exc}") from None
    if data.size == 0:
        raise ManifestError(f"{where} is empty")
    return data


def _pattern(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", pattern)
    rx = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>.+?)" for i, p in enumerate(parts))
    try:
        return re.compile(rx + r"\Z")
    except re.error as exc:
        raise ManifestError(f"weight pattern {pattern!r} is invalid: {exc}") from None


def weight_names(pattern: str, names: Iterable[str]) -> list[str]:
    """Resident weight names matching ``pattern`` (``{placeholder}`` matches any text)."""
    compiled = _pattern(pattern)
    return sorted(n for n in names if compiled.match(n))


def pack_instances(arg: ArgSpec, names: Iterable[str]) -> list[tuple[str, ...]]:
    """The weight names of every BO a ``pack`` argument stands for: one tuple per binding of its placeholders
    found among ``names`` (e.g. one per layer). Raises :class:`ManifestError` when a binding leaves a part
    without a weight."""
    have = set(names)
    bindings: set[tuple[tuple[str, str], ...]] = set()
    placeholders = False
    for pattern, _ in arg.parts:
        compiled = _pattern(pattern)
        if not compiled.groupindex:
            continue
        placeholders = True
        bindings.update(tuple(sorted(m.groupdict().items())) for m in map(compiled.match, have) if m)
    if not placeholders:
        bindings = {()}
    out = []
    for b in sorted(bindings):
        try:
            inst = tuple(pattern.format_map(dict(b)) for pattern, _ in arg.parts)
        except KeyError as exc:
            raise ManifestError(f"pack parts use different placeholders: {exc} is not bound by {dict(b)}") from None
        missing = [(pattern, n) for (pattern, _), n in zip(arg.parts, inst) if n not in have]
        if missing:
            raise ManifestError(f"pack part {missing[0][0]!r} has no resident weight {missing[0][1]!r} "
                                f"(for {dict(b) or 'the pack'})")
        out.append(inst)
    return out


def program_constants(program: Any) -> dict[str, int]:
    """Named integer constants a manifest's ``params`` may use: model dimensions and ``tile_rows``."""
    out: dict[str, int] = {}
    dims = getattr(program, "dims", None)
    if dims is not None and dataclasses.is_dataclass(dims) and not isinstance(dims, type):
        out.update({k: int(v) for k, v in dataclasses.asdict(dims).items() if isinstance(v, int)})
        for extra in ("head_dim", "n_mlp"):
            if hasattr(dims, extra):
                out[extra] = int(getattr(dims, extra))
    if isinstance(getattr(program, "tile_rows", None), int):
        out["tile_rows"] = int(program.tile_rows)
    out.update({k: int(v) for k, v in dict(getattr(program, "constants", {}) or {}).items()})
    return out


def program_ops(program: Any) -> tuple[str, ...] | None:
    """The ops a program implements: its ``ops`` attribute (the encoder's program has one), or None
    (unknown)."""
    ops = getattr(program, "ops", None)
    return None if ops is None else tuple(ops)


def check_program(manifest: Manifest, program: Any) -> None:
    """Start-up checks against the program: known ops, ``tile_rows``, weight patterns that match."""
    known = program_ops(program)
    rows = getattr(program, "tile_rows", None)
    for op, spec in manifest.ops.items():
        if known is not None and op not in known:
            raise ManifestError(f"manifest names op {op!r}, which this program does not have ({', '.join(known)})")
        if spec.tile_rows is not None and rows is not None and spec.tile_rows != rows:
            raise ManifestError(f"op {op!r}: kernel {spec.kernel!r} was built for tile_rows={spec.tile_rows} but "
                                f"the runtime uses tile_rows={rows}; pass tile_rows={spec.tile_rows}")
        for a in spec.args:
            if a.source == "weight" and not weight_names(a.pattern, program.resident):
                raise ManifestError(f"op {op!r}: weight pattern {a.pattern!r} matches no resident weight")
            if a.source == "pack":
                try:
                    if not pack_instances(a, program.resident):
                        raise ManifestError(f"pack {[p for p, _ in a.parts]} matches no resident weights")
                except ManifestError as exc:
                    raise ManifestError(f"op {op!r}: {exc}") from None
