"""A small, strict reader of CTranslate2's ``model.bin`` and the mapping of its Whisper encoder variables.

Layout (little-endian), as written by ``ctranslate2.specs.ModelSpec`` and read by ``Model::load``:

* ``uint32`` binary version (1 to 6 are understood);
* version >= 2: the spec name (a string, see below) and a ``uint32`` spec revision;
* ``uint32`` number of variables, then for each: name (string), ``uint8`` rank, ``rank x uint32`` dims,
  then for version >= 4 an ``uint8`` dtype id (``0`` float32, ``1`` int8, ``2`` int16, ``3`` int32,
  ``4`` float16, ``5`` bfloat16) and a ``uint32`` *byte* count; before version 4 an ``uint8`` item size
  (4 float32, 2 int16, 1 int8) and a ``uint32`` *element* count; then the raw data;
* version >= 3: ``uint32`` number of aliases, then (alias, target) string pairs. An alias ``a -> t`` also
  aliases ``a_scale -> t_scale`` when that scale exists.

A string is an ``uint16`` byte length (counting a terminating NUL) followed by UTF-8 bytes and the NUL.

Quantized int8 (and int16) variables come with a float ``<name>_scale`` variable: one scale per row of the
weight (the first axis, the other axes flattened) or a single per-layer scale. They are dequantized the way
CTranslate2's CPU ``Dequantize`` op does it: ``float32(q) * (1.0f / scale)`` computed in float32.

The file is memory-mapped; only the variables asked for are copied out. Every inconsistency raises
:class:`~aiowhisper_npu.errors.ModelError`. Which variables make up a Whisper model is
:mod:`aiowhisper_npu.models.ct2_whisper`'s business.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from ..errors import ModelError

__all__ = [
    "CT2_DTYPES",
    "Ct2Variable",
    "Ct2File",
    "read_ct2_variables",
    "MAX_BINARY_VERSION",
]

#: Newest ``model.bin`` binary version this reader understands (CTranslate2 4.x writes 6).
MAX_BINARY_VERSION = 6
#: Ranks above this are treated as corruption (CTranslate2 itself never writes more than 4).
MAX_RANK = 8

#: CTranslate2 ``DataType`` enum id -> (name, little-endian numpy storage dtype). bfloat16 is stored as uint16.
CT2_DTYPES: dict[int, tuple[str, np.dtype]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", np.dtype("<u2")),
}
_FLOAT_IDS = frozenset({0, 4, 5})
_QUANTIZED_IDS = frozenset({1, 2})
#: Binary versions 1-3 stored an item size instead of a dtype id.
_LEGACY_ITEM_SIZES = {4: 0, 2: 2, 1: 1}


@dataclass(frozen=True)
class Ct2Variable:
    """Where one variable's raw data lies in ``model.bin``, and how to interpret it."""

    name: str
    shape: tuple[int, ...]
    dtype_id: int
    offset: int
    num_bytes: int

    @property
    def dtype_name(self) -> str:
        return CT2_DTYPES[self.dtype_id][0]


class _Cursor:
    """Bounds-checked sequential reads over a buffer; every short read becomes a ModelError."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path

    def fail(self, message: str) -> ModelError:
        return ModelError(f"{self.path}: {message}")

    def skip(self, n: int, what: str) -> int:
        """Advance past ``n`` bytes and return where they start."""
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"file is truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"but only {self.size - self.pos} remain"
            )
        start = self.pos
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str) -> int:
        start = self.skip(struct.calcsize(fmt), what)
        return int(struct.unpack_from(fmt, self.buf, start)[0])

    def string(self, what: str) -> str:
        length = self.unpack("<H", f"length of {what}")
        start = self.skip(length, what)
        raw = bytes(self.buf[start : start + length])
        if length == 0 or raw[-1] != 0:
            raise self.fail(f"{what} at offset {start} is not NUL-terminated")
        raw = raw[:-1]
        if b"\0" in raw:
            raise self.fail(f"{what} at offset {start} holds an embedded NUL byte")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} at offset {start} is not valid UTF-8 ({exc.reason})") from None


def _parse_variable(cur: _Cursor, version: int, index: int) -> Ct2Variable:
    """Read one variable record and skip its data."""
    name = cur.string(f"name of variable #{index}")
    rank = cur.unpack("<B", f"rank of {name!r}")
    if rank > MAX_RANK:
        raise cur.fail(f"variable {name!r} has rank {rank} (at most {MAX_RANK} is plausible): file is corrupt")
    shape = tuple(cur.unpack("<I", f"dimension {d} of {name!r}") for d in range(rank))
    count = math.prod(shape)
    if version >= 4:
        dtype_id = cur.unpack("<B", f"dtype of {name!r}")
        if dtype_id not in CT2_DTYPES:
            raise cur.fail(f"variable {name!r} has unknown dtype id {dtype_id} (known: 0-5): file is corrupt")
        num_bytes = cur.unpack("<I", f"byte count of {name!r}")
    else:
        item_size = cur.unpack("<B", f"item size of {name!r}")
        if item_size not in _LEGACY_ITEM_SIZES:
            raise cur.fail(f"variable {name!r} has unknown item size {item_size}: file is corrupt")
        dtype_id = _LEGACY_ITEM_SIZES[item_size]
        num_bytes = cur.unpack("<I", f"element count of {name!r}") * item_size
    expected = count * CT2_DTYPES[dtype_id][1].itemsize
    if num_bytes != expected:
        raise cur.fail(
            f"variable {name!r} of shape {shape} and dtype {CT2_DTYPES[dtype_id][0]} should hold "
            f"{expected} bytes, but its header says {num_bytes}: file is corrupt"
        )
    offset = cur.skip(num_bytes, f"data of {name!r}")
    return Ct2Variable(name, shape, dtype_id, offset, num_bytes)


def _parse_aliases(cur: _Cursor, variables: dict[str, Ct2Variable]) -> dict[str, str]:
    """Read the alias table and resolve every alias (and its ``_scale``) to a stored variable name."""
    aliases: dict[str, str] = {}
    for i in range(cur.unpack("<I", "number of aliases")):
        alias = cur.string(f"name of alias #{i}")
        target = cur.string(f"target of alias {alias!r}")
        real = aliases.get(target, target)
        if real not in variables:
            raise cur.fail(f"alias {alias!r} points to {target!r}, which is not a variable: file is corrupt")
        if alias in variables or alias in aliases:
            raise cur.fail(f"alias {alias!r} duplicates an existing name: file is corrupt")
        aliases[alias] = real
        scale = aliases.get(target + "_scale", target + "_scale")
        if scale in variables and alias + "_scale" not in variables:
            aliases[alias + "_scale"] = scale
    return aliases


class Ct2File:
    """An open, fully indexed ``model.bin``: variable metadata is parsed up front, data is read on demand.

    Use as a context manager (or call :meth:`close`). Arrays returned by :meth:`array` are independent copies.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._buf: mmap.mmap | None = self._map(self.path)  # None once closed
        try:
            self._parse(self._buf)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _map(path: Path) -> mmap.mmap:
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size == 0:
                    raise ModelError(f"{path}: file is empty")
                return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise ModelError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def _parse(self, buf: mmap.mmap) -> None:
        cur = _Cursor(buf, self.path)
        self.binary_version = cur.unpack("<I", "binary version")
        if not 1 <= self.binary_version <= MAX_BINARY_VERSION:
            raise cur.fail(
                f"unsupported binary version {self.binary_version} (this reader understands 1 to "
                f"{MAX_BINARY_VERSION}): not a CTranslate2 model.bin, corrupt, or from a newer CTranslate2"
            )
        self.spec_name = ""
        self.spec_revision = 1
        if self.binary_version >= 2:
            self.spec_name = cur.string("model spec name")
            self.spec_revision = cur.unpack("<I", "spec revision")
        self.variables: dict[str, Ct2Variable] = {}
        for i in range(cur.unpack("<I", "number of variables")):
            var = _parse_variable(cur, self.binary_version, i)
            if var.name in self.variables:
                raise cur.fail(f"variable {var.name!r} is stored twice: file is corrupt")
            self.variables[var.name] = var
        self.aliases: dict[str, str] = {}
        if self.binary_version >= 3:
            self.aliases = _parse_aliases(cur, self.variables)
        if cur.pos != cur.size:
            raise cur.fail(f"{cur.size - cur.pos} unexpected trailing bytes after offset {cur.pos}: file is corrupt")

    def close(self) -> None:
        """Release the memory map."""
        buf = getattr(self, "_buf", None)
        if buf is not None:
            buf.close()
            self._buf = None

    def __enter__(self) -> Ct2File:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def names(self) -> list[str]:
        """Every readable name: stored variables in file order, then aliases."""
        return [*self.variables, *self.aliases]

    def __contains__(self, name: object) -> bool:
        return name in self.variables or name in self.aliases

    def variable(self, name: str) -> Ct2Variable:
        """The stored variable behind ``name`` (following an alias)."""
        var = self.variables.get(self.aliases.get(name, name))
        if var is None:
            raise ModelError(f"{self.path}: variable {name!r} is missing")
        return var

    def _raw(self, var: Ct2Variable) -> np.ndarray:
        if self._buf is None:
            raise ModelError(f"{self.path}: file is closed")
        data = self._buf[var.offset : var.offset + var.num_bytes]  # bytes copy: no view into the map
        return np.frombuffer(data, dtype=CT2_DTYPES[var.dtype_id][1]).reshape(var.shape)

    def array(self, name: str) -> np.ndarray:
        """Materialise ``name``: floats and dequantized int8/int16 as float32, other integers as stored."""
        var = self.variable(name)
        raw = self._raw(var)
        if var.dtype_id in _FLOAT_IDS:
            return _to_float32(raw, var.dtype_id)
        scale_name = name + "_scale"
        if var.dtype_id in _QUANTIZED_IDS and raw.ndim > 0 and scale_name in self:
            return self._dequantize(var, raw, scale_name)
        if var.dtype_id == 1 and raw.ndim > 0:
            raise ModelError(f"{self.path}: int8 variable {name!r} has no {scale_name!r}: file is corrupt")
        return raw.astype(raw.dtype.newbyteorder("="))

    def _dequantize(self, var: Ct2Variable, raw: np.ndarray, scale_name: str) -> np.ndarray:
        scale_var = self.variable(scale_name)
        if scale_var.dtype_id not in _FLOAT_IDS:
            raise ModelError(f"{self.path}: {scale_name!r} has dtype {scale_var.dtype_name}, expected a float")
        scale = _to_float32(self._raw(scale_var), scale_var.dtype_id).reshape(-1)
        rows = raw.shape[0]
        if scale.size not in (1, rows):
            raise ModelError(
                f"{self.path}: {scale_name!r} holds {scale.size} scales for {var.name!r} of shape {var.shape}, "
                f"expected 1 or {rows}: file is corrupt"
            )
        flat = raw.reshape(rows, raw.size // rows if rows else 0).astype(np.float32)
        with np.errstate(all="ignore"):  # a zero/huge scale gives inf/NaN, which validate() reports
            inv = (np.float32(1.0) / scale).astype(np.float32)
            return (flat * (inv if scale.size == 1 else inv[:, None])).reshape(var.shape)


def _to_float32(raw: np.ndarray, dtype_id: int) -> np.ndarray:
    """Convert stored float data (float32, float16 or bfloat16 bit patterns) to a fresh native float32 array."""
    if dtype_id == 5:
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def read_ct2_variables(
    path: str | os.PathLike[str], select: Callable[[str], bool] | Iterable[str] | None = None
) -> dict[str, np.ndarray]:
    """Read variables from a ``model.bin`` file (see :meth:`Ct2File.array` for the dtypes returned).

    ``select`` is a predicate on names or a collection of names; ``None`` reads every variable and alias.
    The ``<name>_scale`` variables of quantized weights are consumed by dequantization and not returned
    unless selected by name. Variables not selected are never read from disk.
    """
    with Ct2File(path) as f:
        if select is None:
            names = [n for n in f.names() if not _is_consumed_scale(f, n)]
        elif callable(select):
            names = [n for n in f.names() if select(n)]
        else:
            names = list(select)
        return {name: f.array(name) for name in names}


def _is_consumed_scale(f: Ct2File, name: str) -> bool:
    base = name[: -len("_scale")]
    return name.endswith("_scale") and base in f and f.variable(base).dtype_id in _QUANTIZED_IDS
