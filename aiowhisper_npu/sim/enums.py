"""Enums that behave like pybind11's ``py::enum_`` (not ``enum.IntEnum``), as pyxrt binds them.

- ``int(e)``, ``e.value``, ``e.name``, ``hash(e)``, ``e.__index__()``; ``str(e)`` is ``"<type>.<NAME>"``,
  ``repr(e)`` is ``"<<type>.<NAME>: <value>>"``; ``Type.__members__`` maps names to members.
- *Convertible* enums (unscoped C enums: ``ert_cmd_state``, ``xclBOSyncDirection``) compare equal to ints;
  *strict* ones (``enum class``: ``bo.flags``) only to members of the same type.
- ``Type(value)`` works for any int; a value without a name (``ert_cmd_state(3)``, the unbound RUNNING
  state) has the name ``"???"``, as in pybind11.
- A plain int is never accepted where an enum is expected: see :func:`require`.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = ["PyEnum", "ert_cmd_state", "xclBOSyncDirection", "bo_flags", "xrt_info_device", "require"]


class PyEnum:
    """Base of the pybind11-style enums below."""

    __slots__ = ("_value",)
    _value: int
    _names: ClassVar[dict[int, str]] = {}
    _strict: ClassVar[bool] = False
    _cache: ClassVar[dict[int, PyEnum]]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls._cache = {}
        for value, name in cls._names.items():
            member = object.__new__(cls)
            member._value = value
            cls._cache[value] = member
            setattr(cls, name, member)

    def __new__(cls, value: int) -> PyEnum:
        if isinstance(value, PyEnum) or not hasattr(value, "__index__"):
            raise TypeError(f"__init__(): incompatible constructor arguments. The following argument types "
                            f"are supported:\n    1. {cls.__name__}(value: int)\n\nInvoked with: {value!r}")
        v = int(value)
        hit = cls._cache.get(v)
        if hit is not None:
            return hit
        member = object.__new__(cls)
        member._value = v
        return member

    @property
    def value(self) -> int:
        return self._value

    @property
    def name(self) -> str:
        return self._names.get(self._value, "???")

    @classmethod
    def _members(cls) -> dict[str, PyEnum]:
        return {n: cls._cache[v] for v, n in cls._names.items()}

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __eq__(self, other: object) -> bool:
        if type(other) is type(self):
            return self._value == other._value
        if self._strict or isinstance(other, PyEnum) or isinstance(other, bool):
            return False
        if isinstance(other, int) or hasattr(other, "__index__"):
            return self._value == int(other)
        return False

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def _label(self) -> str:  # not ``self.name``: a member may itself be called "name" (xrt_info_device)
        return type(self)._names.get(self._value, "???")

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self._label()}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self._label()}: {self._value}>"

    def __getstate__(self) -> int:
        return self._value


class _MembersDescriptor:
    def __get__(self, obj: object, cls: type[PyEnum]) -> dict[str, PyEnum]:
        return cls._members()


PyEnum.__members__ = _MembersDescriptor()  # type: ignore[attr-defined]


class ert_cmd_state(PyEnum):  # noqa: N801 - pyxrt's name
    """Command states. 3 (RUNNING) is not bound in pyxrt, so ``state()`` can return an unnamed value."""

    __slots__ = ()
    _names: ClassVar[dict[int, str]] = {1: "ERT_CMD_STATE_NEW", 2: "ERT_CMD_STATE_QUEUED",
                                        4: "ERT_CMD_STATE_COMPLETED", 5: "ERT_CMD_STATE_ERROR",
                                        6: "ERT_CMD_STATE_ABORT", 7: "ERT_CMD_STATE_SUBMITTED",
                                        8: "ERT_CMD_STATE_TIMEOUT", 9: "ERT_CMD_STATE_NORESPONSE",
                                        10: "ERT_CMD_STATE_SKERROR", 11: "ERT_CMD_STATE_SKCRASHED"}


class xclBOSyncDirection(PyEnum):  # noqa: N801
    __slots__ = ()
    _names: ClassVar[dict[int, str]] = {0: "XCL_BO_SYNC_BO_TO_DEVICE", 1: "XCL_BO_SYNC_BO_FROM_DEVICE",
                                        2: "XCL_BO_SYNC_BO_GMIO_TO_AIE", 3: "XCL_BO_SYNC_BO_AIE_TO_GMIO"}


class bo_flags(PyEnum):  # noqa: N801 - bound as ``bo.flags`` (type name "flags")
    __slots__ = ()
    _strict = True
    _names: ClassVar[dict[int, str]] = {0: "normal", 1 << 24: "cacheable", 1 << 28: "device_only",
                                        1 << 29: "host_only", 1 << 30: "p2p", 1 << 27: "svm"}


bo_flags.__name__ = "flags"
bo_flags.__qualname__ = "bo.flags"


class xrt_info_device(PyEnum):  # noqa: N801
    """``xrt::info::device`` as pyxrt binds it: the C++ enum also has ``aie`` (15) and ``aie_shim`` (16),
    which the binding does not name, so ``dynamic_regions`` is 17 and ``vmr`` 18 (xrt_device.h)."""

    __slots__ = ()
    _strict = True
    _names: ClassVar[dict[int, str]] = {0: "bdf", 1: "interface_uuid", 2: "kdma", 3: "max_clock_frequency_mhz",
                                        4: "m2m", 5: "name", 6: "nodma", 7: "offline", 8: "electrical",
                                        9: "thermal", 10: "mechanical", 11: "memory", 12: "platform",
                                        13: "pcie_info", 14: "host", 17: "dynamic_regions", 18: "vmr"}


def require(value: object, enum_type: type[PyEnum], signature: str) -> PyEnum:
    """``value`` if it is a member of ``enum_type``, else pybind11's TypeError for ``signature``."""
    if type(value) is enum_type:
        assert isinstance(value, PyEnum)
        return value
    raise TypeError(f"{signature.split('(')[0]}(): incompatible function arguments. The following argument "
                    f"types are supported:\n    1. {signature}\n\nInvoked with: {value!r}")
