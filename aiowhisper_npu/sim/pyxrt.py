"""A stand-in for XRT's ``pyxrt`` bindings, driving a simulated NPU (:mod:`aiowhisper_npu.sim.npu`).

Same names, same behaviour as pyxrt ≤ 2.21 (``../shared/reference/pyxrt-api.md``): positional arguments
only; pybind11-style enums, TypeError for a plain int where a flag or direction is expected; ``bo.read``
returns a fresh int8 array, ``bo.map`` a writable 'B' memoryview, ``bo.write`` takes any buffer;
``kernel(*args)`` starts the run at once and swallows arguments it cannot convert; ``run.wait(ms)`` returns
``ERT_CMD_STATE_TIMEOUT`` instead of raising; ``run.state()`` never blocks; construction errors raise
RuntimeError with XRT's messages. ``run.wait``, ``bo.sync`` and ``kernel(...)`` **hold the GIL** for their
modeled duration (a C sleep through ``ctypes.PyDLL``), as the real C++ calls do.

Differences, deliberately: passing more BOs than a kernel declares raises RuntimeError (the real XRT
segfaults); ``map()``'s memoryview keeps the memory alive (the real one dangles); non-pyxrt extras are
prefixed ``sim_``: :func:`sim_configure`, :func:`sim_config`, :func:`sim_device` (the
:class:`~aiowhisper_npu.sim.npu.SimNPU`, for fault injection and run records).

Each module object is one "machine": :func:`aiowhisper_npu.sim.new_pyxrt` loads a fresh, independent copy.
"""

from __future__ import annotations

import ctypes
import time
import weakref
from typing import Any

import numpy as np

from aiowhisper_npu.sim.config import SimConfig, gil_copy, gil_sleep
from aiowhisper_npu.sim.enums import PyEnum, bo_flags, ert_cmd_state, require, xclBOSyncDirection, xrt_info_device
from aiowhisper_npu.sim.npu import MemRef, SimNPU, SimRun
from aiowhisper_npu.sim.xclbin import KernelDesc, XclbinDesc, parse_xclbin

__all__ = ["device", "xclbin", "uuid", "hw_context", "kernel", "run", "bo", "xclbinkernel", "ert_cmd_state",
           "xclBOSyncDirection", "xrt_info_device", "XCL_BO_FLAGS_NONE", "enumerate_devices", "log_message",
           "sim_configure", "sim_config", "sim_device"]

XCL_BO_FLAGS_NONE = 0
_C_INT = (-(2**31), 2**31 - 1)


class _Machine:
    """The "driver" state of this module object: the config and its simulated devices."""

    def __init__(self, config: SimConfig):
        self.config = config
        self.npus = [SimNPU(i, config) for i in range(config.devices)]


_machine = _Machine(SimConfig())


def sim_configure(config: SimConfig) -> None:
    """Replace the simulated machine (devices opened before keep the old one)."""
    global _machine
    _machine = _Machine(config)


def sim_config() -> SimConfig:
    return _machine.config


def sim_device(index: int = 0) -> SimNPU:
    """The simulated NPU behind ``device(index)`` (fault injection, run records, context counts)."""
    return _machine.npus[index]


def enumerate_devices() -> int:
    return len(_machine.npus)


def log_message(level: Any, tag: str, msg: str, /) -> None:
    return None


def _bad_args(fn: str, sigs: list[str], args: tuple[Any, ...]) -> TypeError:
    kind = "constructor" if fn == "__init__" else "function"
    lines = "\n".join(f"    {i + 1}. {s}" for i, s in enumerate(sigs))
    return TypeError(f"{fn}(): incompatible {kind} arguments. The following argument types are supported:\n"
                     f"{lines}\n\nInvoked with: {', '.join(repr(a) for a in args)}")


def _is_int(v: Any) -> bool:
    return hasattr(v, "__index__") and not isinstance(v, (float, PyEnum))


class uuid:  # noqa: N801
    def __init__(self, value: str, /):
        if not isinstance(value, str):
            raise _bad_args("__init__", ["pyxrt.uuid(arg0: str)"], (value,))
        self._s = value.lower()

    def to_string(self) -> str:
        return self._s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, uuid) and other._s == self._s

    def __hash__(self) -> int:
        return hash(self._s)


class xclbinkernel:  # noqa: N801
    def __init__(self, desc: KernelDesc):
        self._desc = desc

    def get_name(self) -> str:
        return self._desc.name

    def get_num_args(self) -> int:
        return self._desc.num_args


class xclbin:  # noqa: N801
    def __init__(self, *args: Any):
        self._desc: XclbinDesc | None = None
        if not args:
            return
        if len(args) != 1 or not isinstance(args[0], str):
            raise _bad_args("__init__", ["pyxrt.xclbin()", "pyxrt.xclbin(filename: str)"], args)
        self._desc = parse_xclbin(args[0])

    def _d(self) -> XclbinDesc:
        if self._desc is None:
            raise RuntimeError("No xclbin specified")
        return self._desc

    def get_uuid(self) -> uuid:
        return uuid(self._d().uuid)

    def get_kernels(self) -> list[xclbinkernel]:
        return [xclbinkernel(k) for k in self._d().kernels]

    def get_xsa_name(self) -> str:
        return self._d().xsa_name

    def get_mems(self) -> list[Any]:
        return []


class device:  # noqa: N801
    def __init__(self, *args: Any):
        self._npu: SimNPU | None = None
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

    def _n(self) -> SimNPU:
        if self._npu is None:
            raise RuntimeError("No device handle")
        return self._npu

    def register_xclbin(self, xb: xclbin, /) -> uuid:
        if not isinstance(xb, xclbin):
            raise _bad_args("register_xclbin", ["(self: pyxrt.device, xclbin: pyxrt.xclbin) -> pyxrt.uuid"], (xb,))
        self._n().register(xb._d())
        self._last = xb.get_uuid()
        return self._last

    def load_xclbin(self, xb: Any, /) -> uuid:
        raise RuntimeError("load_axlf: Operation not supported")  # what XRT 2.20 says on an NPU

    def get_xclbin_uuid(self) -> uuid:
        return self._last or uuid("00000000-0000-0000-0000-000000000000")

    def get_info(self, key: xrt_info_device, /) -> str:
        require(key, xrt_info_device, "get_info(self: pyxrt.device, key: pyxrt.xrt_info_device) -> object")
        cfg = self._n().config
        return {5: cfg.device_name, 0: cfg.bdf}.get(int(key), "")


class hw_context:  # noqa: N801
    def __init__(self, *args: Any):
        self._npu: SimNPU | None = None
        self._uuid = ""
        self.column = 0
        if not args:
            return
        if len(args) != 2 or not isinstance(args[0], device) or not isinstance(args[1], uuid):
            raise _bad_args("__init__", ["pyxrt.hw_context()", "pyxrt.hw_context(device: pyxrt.device, "
                                         "xclbin_id: pyxrt.uuid)"], args)
        npu = args[0]._n()
        cid, self.column = npu.open_context(args[1].to_string())
        self._npu, self._uuid = npu, args[1].to_string()
        self._finalizer = weakref.finalize(self, npu.close_context, cid)


class kernel:  # noqa: N801
    def __init__(self, *args: Any):
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

    def get_name(self) -> str:
        return self._desc.name

    def __call__(self, *args: Any) -> run:
        r = run(self)
        if len(args) > self._desc.num_args:
            raise RuntimeError(
                f"kernel '{self._desc.name}' takes {self._desc.num_args} arguments (opcode, instr, ninstr and "
                f"{self._desc.num_args - 3} BOs) but {len(args)} were given. The real XRT segfaults here "
                "(validate_bo_at_index); check xclbin kernel get_num_args() - 3 before calling.")
        for i, a in enumerate(args):
            try:
                r.set_arg(i, a)
            except Exception:  # pyxrt swallows every conversion error: the argument stays unset
                pass
        r.start()
        return r


class run:  # noqa: N801
    def __init__(self, *args: Any):
        if len(args) > 1 or (args and not isinstance(args[0], kernel)):
            raise _bad_args("__init__", ["pyxrt.run()", "pyxrt.run(kernel: pyxrt.kernel)"], args)
        self._kernel: kernel | None = args[0] if args else None
        self._args: dict[int, Any] = {}
        self._sim: SimRun | None = None

    def set_arg(self, index: int, value: Any, /) -> None:
        ok_value = isinstance(value, bo) or (_is_int(value) and _C_INT[0] <= int(value) <= _C_INT[1])
        if not _is_int(index) or not ok_value:
            raise _bad_args("set_arg", ["(self: pyxrt.run, index: int, bo: pyxrt.bo) -> None",
                                        "(self: pyxrt.run, index: int, value: int) -> None"], (index, value))
        if self._kernel is None or not 0 <= int(index) < self._kernel._desc.num_args:
            raise RuntimeError(f"Invalid kernel argument index ({int(index)}): the kernel declares "
                               f"{self._kernel._desc.num_args if self._kernel else 0} (the real XRT may crash)")
        self._args[int(index)] = value if isinstance(value, bo) else int(value)

    def _problem(self, desc: KernelDesc) -> tuple[dict[str, MemRef], str | None]:
        a = self._args
        refs: dict[str, MemRef] = {}
        missing = [f"{i} ({d.name})" for i, d in enumerate(desc.args, 3) if not isinstance(a.get(i), bo)]
        for i, d in enumerate(desc.args, 3):
            if isinstance(a.get(i), bo):
                refs[d.name] = a[i]._ref
        ins = a.get(1)
        if a.get(0) != 3:
            return refs, f"unsupported opcode {a.get(0)!r} (mlir-aie kernels take 3)"
        if not isinstance(ins, bo) or not isinstance(a.get(2), int):
            return refs, "no instruction buffer / instruction count"
        if not 1 <= a[2] <= ins._ref.size // 4:
            return refs, f"instruction count {a[2]} does not fit the {ins._ref.size}-byte instruction BO"
        if not ins._ref.mem.synced_to_device:
            return refs, "the instruction BO was never synced to the device"
        if missing:
            return refs, f"arguments not set: {', '.join(missing)}"
        return refs, None

    def start(self) -> None:
        if self._kernel is None:
            raise RuntimeError("run has no kernel")
        if self._sim is not None and self._sim.state_at(time.perf_counter()) not in (4, 5, 6, 8):
            raise RuntimeError("bad command state, can't launch")
        desc, npu = self._kernel._desc, self._kernel._ctx._npu
        if npu is None:
            raise RuntimeError("run has no hardware context")
        refs, problem = self._problem(desc)
        gil_sleep(npu.config.submit_seconds())  # the submit ioctl, GIL held
        self._sim = npu.submit(desc, self._kernel._ctx.column, refs, problem)

    def state(self) -> ert_cmd_state:
        if self._sim is None:
            return ert_cmd_state(1)
        return ert_cmd_state(self._sim.state_at(time.perf_counter()))

    def wait(self, *args: Any) -> ert_cmd_state:
        if len(args) > 1 or (args and not _is_int(args[0])):
            raise _bad_args("wait", ["(self: pyxrt.run) -> pyxrt.ert_cmd_state",
                                     "(self: pyxrt.run, timeout: int) -> pyxrt.ert_cmd_state"], args)
        if self._sim is None:
            raise RuntimeError("run was never started")
        ms = int(args[0]) if args else 0
        return ert_cmd_state(self._sim.wait(ms / 1000.0 if ms > 0 else None))  # 0 = wait forever, as XRT

    def wait2(self, *args: Any) -> None:
        st = self.wait(*args)
        if st != 4:
            raise RuntimeError(f"Command failed to complete successfully ({st.name})")

    @property
    def sim_run(self) -> SimRun | None:
        """The simulator's record of this run (not in pyxrt)."""
        return self._sim


class bo:  # noqa: N801
    flags = bo_flags
    normal = bo_flags.normal  # type: ignore[attr-defined]
    cacheable = bo_flags.cacheable  # type: ignore[attr-defined]
    device_only = bo_flags.device_only  # type: ignore[attr-defined]
    host_only = bo_flags.host_only  # type: ignore[attr-defined]
    p2p = bo_flags.p2p  # type: ignore[attr-defined]
    svm = bo_flags.svm  # type: ignore[attr-defined]

    _SIGS = ["pyxrt.bo(device: pyxrt.device, size: int, flags: pyxrt.bo.flags, group: int)",
             "pyxrt.bo(parent: pyxrt.bo, size: int, offset: int)"]

    def __init__(self, *args: Any):
        if len(args) == 4 and isinstance(args[0], device) and _is_int(args[1]) and type(args[2]) is bo_flags \
                and _is_int(args[3]):
            dev, size, flags = args[0], int(args[1]), args[2]
            if flags in (bo_flags.device_only, bo_flags.p2p):  # type: ignore[attr-defined]
                raise RuntimeError("Bad BO flags (err=95)")
            if size <= 0:
                raise RuntimeError("DRM_IOCTL_AMDXDNA_CREATE_BO IOCTL failed (err=-22): Invalid argument")
            self._npu: SimNPU = dev._n()
            self._ref = MemRef(self._npu.allocate(size), 0, size)
            self._flags, self._group = flags, int(args[3])
        elif len(args) == 3 and isinstance(args[0], bo) and _is_int(args[1]) and _is_int(args[2]):
            parent, size, off = args[0], int(args[1]), int(args[2])
            if size < 0 or off < 0 or size + off > parent._ref.size:
                raise RuntimeError("sub buffer size and offset: Invalid argument")
            self._npu, self._flags, self._group = parent._npu, parent._flags, parent._group
            self._ref = MemRef(parent._ref.mem, parent._ref.offset + off, size)
        else:
            raise _bad_args("__init__", self._SIGS, args)

    def size(self) -> int:
        return self._ref.size

    def address(self) -> int:
        return self._ref.mem.address + self._ref.offset

    def write(self, buffer: Any, offset: int, /) -> None:
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
            data = np.frombuffer(view.cast("B") if view.format != "B" or view.ndim != 1 else view, np.uint8)
        else:  # pyxrt copies itemsize*size bytes from the base pointer, ignoring strides
            arr = np.asarray(buffer)
            if any(s < 0 for s in arr.strides):
                raise ValueError("sim pyxrt: negative strides are not emulated; pass contiguous data")
            data = np.frombuffer(ctypes.string_at(arr.ctypes.data, n), np.uint8)
        gil_copy(self._ref.host[off : off + n], data)  # a C memcpy: the GIL stays held

    def read(self, size: int, offset: int, /) -> np.ndarray:
        if not (_is_int(size) and _is_int(offset)):
            raise _bad_args("read", ["(self: pyxrt.bo, size: int, skip: int) -> numpy.ndarray[numpy.int8]"],
                            (size, offset))
        n, off = int(size), int(offset)
        if n + off > self._ref.size or n < 0 or off < 0:
            raise RuntimeError("attempting to read past buffer size: Invalid argument")
        out = np.empty(n, np.int8)
        gil_copy(out, self._ref.host[off : off + n])
        return out

    def map(self) -> memoryview:
        return memoryview(self._ref.host)

    def sync(self, *args: Any) -> None:
        sigs = ["(self: pyxrt.bo, direction: pyxrt.xclBOSyncDirection, size: int, offset: int) -> None",
                "(self: pyxrt.bo, direction: pyxrt.xclBOSyncDirection) -> None"]
        if len(args) not in (1, 3) or type(args[0]) is not xclBOSyncDirection or \
                (len(args) == 3 and not (_is_int(args[1]) and _is_int(args[2]))):
            raise _bad_args("sync", sigs, args)
        size, off = (int(args[1]), int(args[2])) if len(args) == 3 else (self._ref.size, 0)
        if int(args[0]) > 1:
            raise RuntimeError("Operation not supported")  # GMIO directions need an AIE graph
        self._npu.sync(self._ref, int(args[0]) == 0, size, off)
