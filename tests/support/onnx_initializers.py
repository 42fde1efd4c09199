"""Read the float32 initializers of an ONNX file with no onnx package: a minimal protobuf walk (tests only).

ModelProto.graph (field 7) -> GraphProto.initializer (field 5) -> TensorProto: dims (1), data_type (2,
1 = float32), name (8), float_data (4) or raw_data (9). Enough for small exported models such as Silero VAD.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of one protobuf message."""
    out: list[tuple[int, int, int | bytes]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, wire, value))
    return out


def _tensor(buf: bytes) -> tuple[str, np.ndarray | None]:
    dims: list[int] = []
    name, dtype, data = "", 0, None
    for number, wire, value in _fields(buf):
        if number == 1 and isinstance(value, int):
            dims.append(value)
        elif number == 1 and isinstance(value, bytes):  # packed dims
            pos = 0
            while pos < len(value):
                d, pos = _varint(value, pos)
                dims.append(d)
        elif number == 2 and isinstance(value, int):
            dtype = value
        elif number == 8 and isinstance(value, bytes):
            name = value.decode()
        elif number in (4, 9) and wire == 2 and isinstance(value, bytes):
            data = np.frombuffer(value, np.float32)
    if dtype != 1 or data is None:
        return name, None
    return name, data.reshape(dims) if dims else data


def read_initializers(path: Path) -> dict[str, np.ndarray]:
    """Every float32 initializer of the ONNX model at ``path``, by name."""
    out: dict[str, np.ndarray] = {}
    for number, _, graph in _fields(path.read_bytes()):
        if number == 7 and isinstance(graph, bytes):
            for g_number, _, value in _fields(graph):
                if g_number == 5 and isinstance(value, bytes):
                    name, arr = _tensor(value)
                    if arr is not None:
                        out[name] = arr
    return out
