"""How a device's failure becomes the error a request raises.

One device error can fail several requests (a batched copy, say), so each request gets an exception object
of its own with the device's error chained as its ``__cause__``: the device's exception is never raised by
two requests, nor written to. The library's typed errors keep their type and message (a note says where);
anything else becomes a :class:`~aiowhisper_npu.errors.DeviceError`.
"""

from __future__ import annotations

from ..errors import AiowhisperError, DeviceError
from ..tiles import Device, Tile

__all__ = ["request_error", "tile_error"]


def request_error(exc: BaseException, where: str) -> BaseException:
    """A new exception for one request, saying ``where`` ``exc`` happened, with ``exc`` as its cause.

    Not an ``Exception`` (KeyboardInterrupt, say): ``exc`` itself, which is not the device's to reword.
    """
    if not isinstance(exc, Exception):
        return exc
    err: BaseException | None = None
    if isinstance(exc, AiowhisperError):
        try:
            err = type(exc)(*exc.args)
        except Exception:  # a subclass with another constructor
            err = None
        if err is not None:
            err.add_note(where)
    if err is None:
        err = DeviceError(f"{where}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def tile_error(exc: BaseException, device: Device, tile: Tile, what: str) -> BaseException:
    """:func:`request_error` for ``what`` (a copy, a kernel) failing on ``tile``."""
    return request_error(exc, f"{device.name} {what} failed on tile {tile.label or tile.index} (op {tile.op!r})")
