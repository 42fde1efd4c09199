"""A stand-in for XRT's ``pyxrt`` bindings, driving a simulated NPU (:mod:`aiowhisper_npu.sim.npu`).

Same names, same behaviour as pyxrt 2.21 on amdxdna (``../shared/reference/pyxrt-api.md`` and
``pyxrt-conformance.md``; the names and arities are checked against ``tests/data/pyxrt_surface.json``):
positional arguments only; pybind11-style enums, TypeError for a plain int where a flag or direction is
expected; ``bo.read`` returns a fresh int8 array, ``bo.map`` a writable 'B' memoryview, ``bo.write`` takes
any buffer; ``kernel(*args)`` starts the run at once and swallows arguments it cannot convert;
``run.wait(ms)`` returns ``ERT_CMD_STATE_TIMEOUT`` instead of raising; ``run.state()`` never blocks and
reads ``ERT_CMD_STATE_NEW`` until the run ends (the driver writes NEW at submit, the final state at
completion); construction errors raise RuntimeError with XRT's and the driver's messages. ``run.wait``,
``bo.sync`` and ``kernel(...)`` **hold the GIL** for their modeled duration (a C sleep through
``ctypes.PyDLL``), as the real C++ calls do.

As strict as amdxdna: kernels take ``opcode, instr, ninstr, bo0..bo4`` as aiecc builds them
(``get_num_args()`` is 8; fewer BOs are fine, a kernel that needs an unset one fails its run); ``ninstr``
must be the instruction BO's size in the unit the kernel declares (words or bytes); BO flags other than
``host_only`` and ``cacheable`` fail; ``map()`` views die with their BO (:class:`~aiowhisper_npu.sim.npu.SimNPU`
releases and poisons them). Deliberate differences: more arguments than the kernel declares raise
RuntimeError (the real XRT indexes past its table and crashes); names that are not pyxrt's start with
``sim_``: :func:`sim_configure`, :func:`sim_config`, :func:`sim_device` (the ``SimNPU``, for fault
injection and run records) and ``run.sim_run``.

Each module object is one "machine": :func:`aiowhisper_npu.sim.new_pyxrt` loads a fresh, independent copy.
Module-level imports are private (``_``-prefixed) so the module's public names are pyxrt's.
"""

from __future__ import annotations

import ctypes as _ctypes
import time as _time
import weakref as _weakref
from typing import Any as _Any, ClassVar as _ClassVar

import numpy as _np

from aiowhisper_npu.sim.config import SimConfig as _SimConfig, gil_copy as _gil_copy, gil_sleep as _gil_sleep
from aiowhisper_npu.sim.enums import (
    PyEnum as _PyEnum,
    bo_flags as _bo_flags,
    ert_cmd_state,
    require as _require,
    xclBOSyncDirection,
    xrt_info_device,
)
from aiowhisper_npu.sim.npu import Memory as _Memory, MemRef as _MemRef, SimNPU as _SimNPU, SimRun as _SimRun
from aiowhisper_npu.sim.xclbin import (
    KernelDesc as _KernelDesc,
    XclbinDesc as _XclbinDesc,
    parse_xclbin as _parse_xclbin,
)

__all__ = ["device", "xclbin", "uuid", "hw_context", "kernel", "run", "bo", "ert_cmd_state",
           "xclBOSyncDirection", "xrt_info_device", "XCL_BO_FLAGS_NONE", "enumerate_devices", "log_message",
           "sim_configure", "sim_config", "sim_device"]

XCL_BO_FLAGS_NONE = 0
_C_INT = (-(2**31), 2**31 - 1)
_NEW, _TERMINAL = 1, frozenset({4, 5, 6, 8, 9, 10, 11})


class _Machine:
    """The "driver" state of this module object: the config and its simulated devices."""

    def __init__(self, config: _SimConfig):
        self.config = config
        self.npus = [_SimNPU(i, config) for i in range(config.devices)]


_machine = _Machine(_SimConfig())


def sim_configure(config: _SimConfig) -> None:
    """Replace the simulated machine (devices opened before keep the old one)."""
    global _machine
    _machine = _Machine(config)


def sim_config() -> _SimConfig:
    return _machine.config


def sim_device(index: int = 0) -> _SimNPU:
    """The simulated NPU behind ``device(index)`` (fault injection, run records, context counts)."""
    return _machine.npus[index]


def enumerate_devices() -> int:
    return len(_machine.npus)


def log_message(level: _Any, tag: str, msg: str, /) -> None:
    return None


def _bad_args(fn: str, sigs: list[str], args: tuple[_Any, ...]) -> TypeError:
    kind = "constructor" if fn == "__init__" else "function"
    lines = "\n".join(f"    {i + 1}. {s}" for i, s in enumerate(sigs))
    return TypeError(f"{fn}(): incompatible {kind} arguments. The following argument types are supported:\n"
                     f"{lines}\n\nInvoked with: {', '.join(repr(a) for a in args)}")


def _is_int(v: _Any) -> bool:
    return hasattr(v, "__index__") and not isinstance(v, (float, _PyEnum))


class uuid:  # noqa: N801 - identity equality, like the pybind11 object (no __eq__/__hash__ bound)
    def __init__(self, value: str, /):
        if not isinstance(value, str):
            raise _bad_args("__init__", ["pyxrt.uuid(arg0: str)"], (value,))
        self._s = value.lower()

    def to_string(self) -> str:
        return self._s


class xclbin:  # noqa: N801
    class xclbinkernel:  # noqa: N801 - bound as pyxrt.xclbin.xclbinkernel
        def __init__(self) -> None:
            self._desc: _KernelDesc | None = None

        @classmethod
        def _of(cls, desc: _KernelDesc) -> xclbin.xclbinkernel:
            k = cls()
            k._desc = desc
            return k

        def _d(self) -> _KernelDesc:
            if self._desc is None:
                raise RuntimeError("No kernel")
            return self._desc

        def get_name(self) -> str:
            return self._d().name

        def get_num_args(self) -> int:
            return self._d().num_args

    def __init__(self, *args: _Any):
        self._desc: _XclbinDesc | None = None
        if not args:
            return
        if len(args) != 1 or not isinstance(args[0], str):
            raise _bad_args("__init__", ["pyxrt.xclbin()", "pyxrt.xclbin(filename: str)"], args)
        self._desc = _parse_xclbin(args[0])

    def _d(self) -> _XclbinDesc:
        if self._desc is None:
            raise RuntimeError("No xclbin specified")
        return self._desc

    def get_uuid(self) -> uuid:
        return uuid(self._d().uuid)

    def get_kernels(self) -> list[xclbin.xclbinkernel]:
        return [xclbin.xclbinkernel._of(k) for k in self._d().kernels]

    def get_xsa_name(self) -> str:
        return self._d().xsa_name

    def get_mems(self) -> list[_Any]:
        return []


class device:  # noqa: N801
    def __init__(self, *args: _Any):
        self._npu: _SimNPU | None = None
        self._last: uuid | None = None
        if not args:
            return
        a = args[0]
        if len(args) != 1 or not (isinstance(a, str) or _is_int(a)):
            raise _bad_args("__init__", ["pyxrt.device()", "pyxrt.device(index: int)", "pyxrt.device(bdf: str)"],
                            args)
        npus = _machine.npus
        if isinstance(a, str):
            hit = [n for n in npus if n.config.bdf == a]
            if not hit:
                raise RuntimeError(f"No such device with bdf '{a}'")
            self._npu = hit[0]
        elif not 0 <= int(a) < len(npus):
            raise RuntimeError(f" No such device with index '{int(a)}'")
        else:
            self._npu = npus[int(a)]

    def _n(self) -> _SimNPU:
        if self._npu is None:
            raise RuntimeError("No device handle")
        return self._npu

    def register_xclbin(self, xb: xclbin, /) -> uuid:
        if not isinstance(xb, xclbin):
            raise _bad_args("register_xclbin", ["(self: pyxrt.device, xclbin: pyxrt.xclbin) -> pyxrt.uuid"], (xb,))
        self._n().register(xb._d())
        self._last = xb.get_uuid()
        return self._last

    def load_xclbin(self, xb: _Any, /) -> uuid:
        raise RuntimeError("load_axlf: Operation not supported")  # what XRT 2.20 says on an NPU

    def get_xclbin_uuid(self) -> uuid:
        return self._last or uuid("00000000-0000-0000-0000-000000000000")

    def get_info(self, key: xrt_info_device, /) -> str:
        _require(key, xrt_info_device, "get_info(self: pyxrt.device, key: pyxrt.xrt_info_device) -> object")
        cfg = self._n().config
        return {5: cfg.device_name, 0: cfg.bdf}.get(int(key), "")


class hw_context:  # noqa: N801
    def __init__(self, *args: _Any):
        self._npu: _SimNPU | None = None
        self._uuid = ""
        self._column = 0
        if not args:
            return
        if len(args) != 2 or not isinstance(args[0], device) or not isinstance(args[1], uuid):
            raise _bad_args("__init__", ["pyxrt.hw_context()", "pyxrt.hw_context(device: pyxrt.device, "
                                         "xclbin_id: pyxrt.uuid)"], args)
        npu = args[0]._n()
        cid, self._column = npu.open_context(args[1].to_string())
        self._npu, self._uuid = npu, args[1].to_string()
        self._finalizer = _weakref.finalize(self, npu.close_context, cid)


class kernel:  # noqa: N801
    def __init__(self, *args: _Any):
        if len(args) == 2 and isinstance(args[0], hw_context) and isinstance(args[1], str):
            ctx, name = args
        elif 3 <= len(args) <= 4 and isinstance(args[0], device) and isinstance(args[1], uuid) \
                and isinstance(args[2], str):
            ctx, name = hw_context(args[0], args[1]), args[2]  # legacy form: an implicit context
        else:
            raise _bad_args("__init__", ["pyxrt.kernel(context: pyxrt.hw_context, name: str)",
                                         "pyxrt.kernel(device: pyxrt.device, xclbin_id: pyxrt.uuid, name: str, "
                                         "mode: pyxrt.kernel.cu_access_mode)"], args)
        if ctx._npu is None:
            raise RuntimeError("No such kernel '" + name + "': Invalid argument")
        desc = ctx._npu.xclbin(ctx._uuid).kernel(name)
        if desc is None:
            raise RuntimeError(f"No such kernel '{name}': Invalid argument")
        self._ctx, self._desc = ctx, desc

    def group_id(self, argno: int, /) -> int:
        if not _is_int(argno):
            raise _bad_args("group_id", ["(self: pyxrt.kernel, argno: int) -> int"], (argno,))
        if not 0 <= int(argno) < self._desc.num_args:
            raise RuntimeError(f"Invalid kernel argument index ({int(argno)}): Invalid argument")
        return self._desc.group_id(int(argno))

    def __call__(self, *args: _Any) -> run:
        r = run(self)
        if len(args) > self._desc.num_args:
            raise RuntimeError(
                f"kernel '{self._desc.name}' takes {self._desc.num_args} arguments (opcode, instr, ninstr and "
                f"{self._desc.num_args - 3} BOs) but {len(args)} were given. The real XRT indexes past its "
                "argument table here and crashes; check xclbin kernel get_num_args() - 3 before calling.")
        for i, a in enumerate(args):
            try:
                r.set_arg(i, a)
            except Exception:  # pyxrt swallows every conversion error: the argument stays unset
                pass
        r.start()
        return r


class run:  # noqa: N801
    def __init__(self, *args: _Any):
        if len(args) > 1 or (args and not isinstance(args[0], kernel)):
            raise _bad_args("__init__", ["pyxrt.run()", "pyxrt.run(kernel: pyxrt.kernel)"], args)
        self._kernel: kernel | None = args[0] if args else None
        self._args: dict[int, _Any] = {}  # holds the BOs, as xrt::run does, while the run lives
        self._sim: _SimRun | None = None

    def set_arg(self, index: int, value: _Any, /) -> None:
        ok_value = isinstance(value, bo) or (_is_int(value) and _C_INT[0] <= int(value) <= _C_INT[1])
        if not _is_int(index) or not ok_value:
            raise _bad_args("set_arg", ["(self: pyxrt.run, index: int, bo: pyxrt.bo) -> None",
                                        "(self: pyxrt.run, index: int, value: int) -> None"], (index, value))
        if self._kernel is None or not 0 <= int(index) < self._kernel._desc.num_args:
            raise RuntimeError(f"Invalid kernel argument index ({int(index)}): the kernel declares "
                               f"{self._kernel._desc.num_args if self._kernel else 0} (the real XRT may crash)")
        self._args[int(index)] = value if isinstance(value, bo) else int(value)

    def _problem(self, desc: _KernelDesc) -> tuple[dict[str, _MemRef], str | None]:
        """The argument BOs by name, and why the firmware would fail this run (None: it runs)."""
        a = self._args
        refs = {d.name: a[i]._ref for i, d in enumerate(desc.args, 3) if isinstance(a.get(i), bo)}
        ins = a.get(1)
        if a.get(0) != 3:
            return refs, f"unsupported opcode {a.get(0)!r} (mlir-aie kernels take 3)"
        if not isinstance(ins, bo) or not isinstance(a.get(2), int):
            return refs, "no instruction buffer / instruction count"
        expected = ins._ref.size // 4 if desc.ninstr == "words" else ins._ref.size
        if a[2] != expected:
            return refs, (f"instruction count {a[2]} does not match the {ins._ref.size}-byte instruction BO: "
                          f"kernel '{desc.name}' counts ninstr in {desc.ninstr} ({expected} expected)")
        if not ins._ref.mem.synced_to_device:
            return refs, "the instruction BO was never synced to the device"
        unset = [f"bo{i - 3} ({d.name})" for i, d in enumerate(desc.args, 3) if not isinstance(a.get(i), bo)]
        if unset:  # XRT does not check; the kernel's DMA would read from an unset (zero) address
            return refs, f"kernel '{desc.name}' uses {', '.join(unset)}, which was not set"
        return refs, None

    def start(self) -> None:
        if self._kernel is None:
            raise RuntimeError("run has no kernel")
        if self._sim is not None and self._sim.state_at(_time.perf_counter()) not in _TERMINAL:
            raise RuntimeError("bad command state, can't launch")
        desc, npu = self._kernel._desc, self._kernel._ctx._npu
        if npu is None:
            raise RuntimeError("run has no hardware context")
        refs, problem = self._problem(desc)
        _gil_sleep(npu.config.submit_seconds())  # the submit ioctl, GIL held
        self._sim = npu.submit(desc, self._kernel._ctx._column, refs, problem)

    def state(self) -> ert_cmd_state:
        if self._sim is None:
            return ert_cmd_state(_NEW)
        st = self._sim.state_at(_time.perf_counter())
        return ert_cmd_state(st if st in _TERMINAL else _NEW)  # amdxdna: NEW from submit to completion

    def wait(self, *args: _Any) -> ert_cmd_state:
        if len(args) > 1 or (args and not _is_int(args[0])):
            raise _bad_args("wait", ["(self: pyxrt.run) -> pyxrt.ert_cmd_state",
                                     "(self: pyxrt.run, timeout: int) -> pyxrt.ert_cmd_state"], args)
        if self._sim is None:
            raise RuntimeError("run was never started")
        ms = int(args[0]) if args else 0
        return ert_cmd_state(self._sim.wait(ms / 1000.0 if ms > 0 else None))  # 0 = wait forever, as XRT

    def wait2(self, *args: _Any) -> None:
        st = self.wait(*args)
        if st != 4:
            raise RuntimeError(f"Command failed to complete successfully ({st.name})")

    @property
    def sim_run(self) -> _SimRun | None:
        """The simulator's record of this run (not in pyxrt)."""
        return self._sim


def _drop_owner(mem: _Memory, npu: _SimNPU) -> None:
    mem.owners -= 1
    if mem.owners == 0:
        npu.free(mem)


class bo:  # noqa: N801
    flags = _bo_flags
    normal = _bo_flags.normal  # type: ignore[attr-defined]
    cacheable = _bo_flags.cacheable  # type: ignore[attr-defined]
    device_only = _bo_flags.device_only  # type: ignore[attr-defined]
    host_only = _bo_flags.host_only  # type: ignore[attr-defined]
    p2p = _bo_flags.p2p  # type: ignore[attr-defined]
    svm = _bo_flags.svm  # type: ignore[attr-defined]

    _SIGS: _ClassVar[list[str]] = ["pyxrt.bo(device: pyxrt.device, size: int, flags: pyxrt.bo.flags, group: int)",
                                   "pyxrt.bo(parent: pyxrt.bo, size: int, offset: int)"]

    def __init__(self, *args: _Any):
        if len(args) == 4 and isinstance(args[0], device) and _is_int(args[1]) and type(args[2]) is _bo_flags \
                and _is_int(args[3]):
            dev, size, flags = args[0], int(args[1]), args[2]
            if flags == _bo_flags.normal:  # type: ignore[attr-defined]
                raise RuntimeError("unsupported buffer type: none flag")  # amdxdna's shim
            if flags not in (_bo_flags.host_only, _bo_flags.cacheable):  # type: ignore[attr-defined]
                raise RuntimeError("Bad BO type.: Invalid argument")  # the shim maps it to AMDXDNA_BO_INVALID
            if size <= 0:
                raise RuntimeError("DRM_IOCTL_AMDXDNA_CREATE_BO IOCTL failed (err=-22): Invalid argument")
            self._npu: _SimNPU = dev._n()
            self._ref = _MemRef(self._npu.allocate(size), 0, size)
            self._flags, self._group = flags, int(args[3])
        elif len(args) == 3 and isinstance(args[0], bo) and _is_int(args[1]) and _is_int(args[2]):
            parent, size, off = args[0], int(args[1]), int(args[2])
            if size < 0 or off < 0 or size + off > parent._ref.size:
                raise RuntimeError("sub buffer size and offset: Invalid argument")
            self._npu, self._flags, self._group = parent._npu, parent._flags, parent._group
            self._ref = _MemRef(parent._ref.mem, parent._ref.offset + off, size)  # shares the parent's handle
        else:
            raise _bad_args("__init__", self._SIGS, args)
        self._ref.mem.owners += 1
        _weakref.finalize(self, _drop_owner, self._ref.mem, self._npu)

    def size(self) -> int:
        return self._ref.size

    def address(self) -> int:
        return self._ref.mem.address + self._ref.offset

    def write(self, buffer: _Any, offset: int, /) -> None:
        try:
            view = memoryview(buffer)
        except TypeError:
            raise _bad_args("write", ["(self: pyxrt.bo, data: buffer, seek: int) -> None"], (buffer, offset)) from None
        if not _is_int(offset):
            raise _bad_args("write", ["(self: pyxrt.bo, data: buffer, seek: int) -> None"], (buffer, offset))
        n, off = view.nbytes, int(offset)
        if n + off > self._ref.size or off < 0:
            raise RuntimeError("attempting to write past buffer size: Invalid argument")
        if view.c_contiguous:
            data = _np.frombuffer(view.cast("B") if view.format != "B" or view.ndim != 1 else view, _np.uint8)
        else:  # pyxrt copies itemsize*size bytes from the base pointer, ignoring strides
            arr = _np.asarray(buffer)
            if any(s < 0 for s in arr.strides):
                raise ValueError("sim pyxrt: negative strides are not emulated; pass contiguous data")
            data = _np.frombuffer(_ctypes.string_at(arr.ctypes.data, n), _np.uint8)
        _gil_copy(self._ref.host[off : off + n], data)  # a C memcpy: the GIL stays held

    def read(self, size: int, offset: int, /) -> _np.ndarray:
        if not (_is_int(size) and _is_int(offset)):
            raise _bad_args("read", ["(self: pyxrt.bo, size: int, skip: int) -> numpy.ndarray[numpy.int8]"],
                            (size, offset))
        n, off = int(size), int(offset)
        if n + off > self._ref.size or n < 0 or off < 0:
            raise RuntimeError("attempting to read past buffer size: Invalid argument")
        out = _np.empty(n, _np.int8)
        _gil_copy(out, self._ref.host[off : off + n])
        return out

    def map(self) -> memoryview:
        """A writable view of the BO's memory that does not keep the BO alive (see the module docstring)."""
        owner = self._ref.host  # a fresh array object per call: SimNPU.free tells by its refcount if views remain
        view = memoryview(owner)  # type: ignore[arg-type]  # numpy arrays export the buffer protocol
        self._ref.mem.views.append((owner, view))
        return view

    def sync(self, *args: _Any) -> None:
        sigs = ["(self: pyxrt.bo, direction: pyxrt.xclBOSyncDirection, size: int, offset: int) -> None",
                "(self: pyxrt.bo, direction: pyxrt.xclBOSyncDirection) -> None"]
        if len(args) not in (1, 3) or type(args[0]) is not xclBOSyncDirection or \
                (len(args) == 3 and not (_is_int(args[1]) and _is_int(args[2]))):
            raise _bad_args("sync", sigs, args)
        size, off = (int(args[1]), int(args[2])) if len(args) == 3 else (self._ref.size, 0)
        if int(args[0]) > 1:
            raise RuntimeError("Operation not supported")  # GMIO directions need an AIE graph
        self._npu.sync(self._ref, int(args[0]) == 0, size, off)


del annotations  # the ``__future__`` import binds this name; the real module has no such attribute
