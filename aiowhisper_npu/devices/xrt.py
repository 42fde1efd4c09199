"""The XRT device: tile ops on an AMD NPU through ``pyxrt`` (``backend="xrt"``) or its stand-in (``"sim"``).

Set-up (:meth:`XrtDevice.load`), following XRT's bindings and the mlir-aie calling convention:
``xrt.device(i)``; per xclbin ``xrt.xclbin(path)``, ``device.register_xclbin`` and, per lane, one
``xrt.hw_context(device, uuid)`` shared by every op and layer of that xclbin (a context's commands run in
order on its column partition, so lanes need a context each: ``xclbins × lanes`` contexts, checked against
the device's limit, 6 on Phoenix, before any is made); ``xrt.kernel(ctx, name)``; instruction BOs
(``bo.flags.cacheable``, ``group_id(1)``) loaded once from the manifest's ``insts`` file and synced; weights
uploaded once into ``host_only`` BOs (bf16 where the manifest says so; a ``pack`` argument's weights into
one BO at the offsets of :mod:`aiowhisper_npu.sim.layout`) that stay resident. An op whose manifest
``args`` outnumber the kernel's ``get_num_args() - 3`` (5 for every aiecc kernel) is a
:class:`ManifestError` naming the op.

Per launch: ``kernel(3, insts_bo, ninstr, *bos)`` (``ninstr`` in the manifest's unit, words by default)
after checking ``len(bos) <= get_num_args() - 3`` (XRT indexes its argument table without a bounds check;
fewer BOs than declared are fine); the BOs are the pipeline slot's own (``alloc`` makes fresh ``host_only``
BOs, never shared by in-flight runs), the resident weights, the job tensors and a per-run params BO.

Lifetime: ``bo.map()``'s memoryview does not own its BO (on hardware a view that outlives the BO
dangles), so every host view of a buffer (:meth:`XrtDevice.host_view`, zero-copy staging, host-op
tensors) is made from a :class:`~.xrt_memory.MappedBO` that holds the BO: :meth:`XrtDevice.free` drops
the device's references, and the BO goes when the last view of it does.

Waiting: pyxrt holds the GIL inside ``run.wait()`` and ``bo.sync()``, so :meth:`XrtDevice.wait` never
blocks in them: it polls the non-blocking ``run.state()`` with a GIL-releasing ``time.sleep`` in between
(``wait_strategy="poll"``, default) or waits in 1 ms slices (``"slices"``). ``"blocking"`` is the naive
``run.wait()``, kept only to demonstrate that it freezes the event loop. Any final state other than
``ERT_CMD_STATE_COMPLETED``, or no completion within ``timeout_s``, raises :class:`DeviceError` for that run.
Large syncs are split into slices so no single call holds the GIL for long.

Ops the manifest does not name run on the host CPU kernels (the program's numpy ``run``) on the BOs'
mapped memory, with the syncs that keep host and device copies coherent.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import BackendUnavailable, DeviceError
from ..sim.config import gil_copy
from ..sim.layout import pack_offsets
from ..tiles import BufferView, KernelProgram
from .manifest import (
    ArgSpec,
    Manifest,
    ManifestError,
    check_program,
    load_manifest,
    pack_instances,
    program_constants,
    read_insts,
    weight_names,
)
from .xrt_memory import XrtBuffer, chunks, live, typed, weight_data

__all__ = ["XrtBuffer", "XrtRun", "XrtDevice", "make_xrt_device", "import_pyxrt", "WAIT_STRATEGIES"]

WAIT_STRATEGIES = ("poll", "slices", "blocking")
_TERMINAL = frozenset({4, 5, 6, 8, 9, 10, 11})


def import_pyxrt() -> ModuleType:
    """``import pyxrt``, or :class:`BackendUnavailable` explaining how XRT provides it."""
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    tag = f"cpython-{sys.version_info.major}{sys.version_info.minor}"
    try:
        return importlib.import_module("pyxrt")
    except ModuleNotFoundError as exc:
        if exc.name not in (None, "pyxrt"):
            raise BackendUnavailable(f"pyxrt failed to import: {exc}. It was probably built for another Python or "
                                     f"XRT; this is Python {py}.") from exc
        raise BackendUnavailable(
            "backend 'xrt' needs XRT's Python bindings (pyxrt), which are not importable. pyxrt ships with XRT, "
            "not PyPI: run `source /opt/xilinx/xrt/setup.sh` (it adds $XILINX_XRT/python to PYTHONPATH and "
            f"$XILINX_XRT/lib to LD_LIBRARY_PATH). pyxrt is built for one Python version; this is Python {py}, so "
            f"XRT must provide pyxrt.{tag}-*.so. Without an NPU, use backend='sim'.") from exc
    except ImportError as exc:
        raise BackendUnavailable(
            f"pyxrt was found but failed to load ({exc}). It is built for a single Python version: this is "
            f"Python {py}, so XRT must provide pyxrt.{tag}-*.so (rebuild XRT or use that Python), and it needs "
            "libxrt_coreutil on LD_LIBRARY_PATH: run `source /opt/xilinx/xrt/setup.sh`, which also sets "
            "PYTHONPATH.") from exc


class XrtRun:
    """A launched op: an NPU run (``xrt_run``) or a host-CPU op (``host_call``), with its timing."""

    __slots__ = ("op", "lane", "xrt_run", "host_call", "params_bo", "written", "timing", "done", "t0")

    def __init__(self, op: str, lane: int):
        self.op, self.lane = op, lane
        self.xrt_run: Any = None
        self.host_call: tuple[Any, ...] | None = None
        self.params_bo: Any = None
        self.written: list[XrtBuffer] = []
        self.timing = (0.0, 0.0)
        self.done = False
        self.t0 = time.perf_counter()


class XrtDevice:
    """The Device protocol on a pyxrt-like module. See the module docstring; use :func:`make_xrt_device`."""

    def __init__(self, xrt: ModuleType, manifest: Manifest, *, name: str = "xrt", lanes: int = 1,
                 device_index: int = 0, poll_interval_s: float = 1e-4, timeout_s: float = 10.0,
                 wait_strategy: str = "poll", max_contexts: int | None = None):
        if lanes < 1:
            raise ValueError(f"lanes must be >= 1, got {lanes}")
        if wait_strategy not in WAIT_STRATEGIES:
            raise ValueError(f"wait_strategy must be one of {WAIT_STRATEGIES}, got {wait_strategy!r}")
        self.xrt, self.manifest, self.name, self.lanes = xrt, manifest, name, lanes
        self.device_index, self.poll_interval_s, self.timeout_s = device_index, poll_interval_s, timeout_s
        self.wait_strategy, self.max_contexts = wait_strategy, max_contexts
        self._to_dev = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE
        self._from_dev = xrt.xclBOSyncDirection.XCL_BO_SYNC_BO_FROM_DEVICE
        self._dev: Any = None
        self._contexts: dict[tuple[Path, int], Any] = {}
        self._kernels: dict[tuple[str, int], Any] = {}
        self._insts: dict[tuple[str, int], tuple[Any, int]] = {}
        self._nargs: dict[str, int] = {}
        self._weights: dict[tuple[Any, ...], Any] = {}  # (name, dtype) or (parts' names, dtypes, align)
        self._resident: dict[tuple[int, tuple[Any, ...]], Any] = {}  # (id(arg), its placeholders' values) -> BO
        self._params_free: list[Any] = []
        self._abandoned: list[XrtRun] = []
        self._program: KernelProgram | None = None
        self._constants: dict[str, int] = {}
        self._workspaces: list[Any] = []
        self._lane_locks = [threading.Lock() for _ in range(lanes)]
        self._group = 0
        self.buffers_live = 0

    # -- set-up ---------------------------------------------------------------------------------------
    def load(self, program: KernelProgram) -> None:
        """Open the device, contexts and kernels, load instructions and upload weights (start-up errors)."""
        xrt, m = self.xrt, self.manifest
        check_program(m, program)
        try:
            self._dev = xrt.device(self.device_index)
        except RuntimeError as exc:
            raise BackendUnavailable(f"cannot open NPU device {self.device_index}: {exc}") from exc
        limit = self.max_contexts or self._context_limit()
        needed = len(m.xclbins) * self.lanes
        if needed > limit:
            raise BackendUnavailable(f"the manifest needs {needed} hardware contexts ({len(m.xclbins)} xclbin(s) x "
                                     f"{self.lanes} lane(s)) but this NPU allows {limit} (Phoenix: 6, Strix: 16); "
                                     "use fewer lanes or put the kernels in one xclbin")
        uuids = {path: self._register(path) for path in m.xclbins}
        for lane in range(self.lanes):
            for path, uuid in uuids.items():
                try:
                    self._contexts[(path, lane)] = xrt.hw_context(self._dev, uuid)
                except RuntimeError as exc:
                    raise BackendUnavailable(
                        f"cannot create hardware context {len(self._contexts) + 1} of {needed} for {path.name}: {exc}. "
                        f"This NPU allows {limit} contexts, shared by every process using it") from exc
        for op, spec in m.ops.items():
            words = read_insts(spec.insts)
            for lane in range(self.lanes):
                try:
                    k = xrt.kernel(self._contexts[(spec.xclbin, lane)], spec.kernel)
                except RuntimeError as exc:
                    raise ManifestError(f"op {op!r}: kernel {spec.kernel!r} of {spec.xclbin.name}: {exc}") from exc
                ibo = xrt.bo(self._dev, words.nbytes, xrt.bo.flags.cacheable, k.group_id(1))
                ibo.write(words, 0)
                ibo.sync(self._to_dev)
                count = int(words.size) if spec.ninstr == "words" else int(words.nbytes)
                self._kernels[(op, lane)], self._insts[(op, lane)] = k, (ibo, count)
            self._group = self._group or self._kernels[(op, 0)].group_id(3)
        self._upload_weights(program)
        self._program = program
        self._constants = program_constants(program)
        self._workspaces = [None] * self.lanes  # made on first use: only ops the manifest lacks need them

    def _context_limit(self) -> int:
        try:
            name = str(self._dev.get_info(self.xrt.xrt_info_device.name))
        except Exception:
            return 6
        return 6 if ("Phoenix" in name or "npu1" in name.lower()) else 16

    def _register(self, path: Path) -> Any:
        try:
            xb = self.xrt.xclbin(str(path))
            self._dev.register_xclbin(xb)
        except RuntimeError as exc:
            raise ManifestError(f"xclbin {path}: {exc}") from exc
        have = {k.get_name(): k.get_num_args() for k in xb.get_kernels()}
        for op, spec in self.manifest.ops.items():
            if spec.xclbin != path:
                continue
            if spec.kernel not in have:
                raise ManifestError(f"op {op!r}: xclbin {path.name} has no kernel {spec.kernel!r} "
                                    f"(it has {', '.join(sorted(have)) or 'none'})")
            if len(spec.args) > have[spec.kernel] - 3:
                raise ManifestError(
                    f"op {op!r}: the manifest passes {len(spec.args)} BOs but kernel {spec.kernel!r} takes at most "
                    f"{have[spec.kernel] - 3} (get_num_args() - 3; aiecc builds every kernel as opcode, instr, "
                    "ninstr, bo0..bo4): pack weights into one BO ({\"pack\": [...]}) or split the op")
            self._nargs[op] = have[spec.kernel]
        return xb.get_uuid()

    def _upload_weights(self, program: KernelProgram) -> None:
        for op, spec in self.manifest.ops.items():
            for argno, a in enumerate(spec.args, 3):
                group = self._kernels[(op, 0)].group_id(argno)
                if a.source == "weight":
                    for name in weight_names(a.pattern, program.resident):
                        if (name, a.dtype) not in self._weights:
                            data = weight_data(program, name, a.dtype)
                            self._weights[(name, a.dtype)] = self._upload([data], 1, group)
                elif a.source == "pack":
                    dtypes = tuple(dt for _, dt in a.parts)
                    for names in pack_instances(a, program.resident):
                        key = (names, dtypes, a.align)
                        if key not in self._weights:
                            parts = [weight_data(program, n, dt) for n, dt in zip(names, dtypes)]
                            self._weights[key] = self._upload(parts, a.align, group)

    def _upload(self, parts: Sequence[np.ndarray], align: int, group: int) -> Any:
        """One resident ``host_only`` BO holding ``parts`` at the offsets of ``sim.layout.pack_offsets``."""
        offsets, size = pack_offsets([p.nbytes for p in parts], align)
        bo = self.xrt.bo(self._dev, max(size, 1), self.xrt.bo.flags.host_only, group)
        for off, data in zip(offsets, parts):
            bo.write(data, off)
        self._sync(bo, self._to_dev, size, 0, yield_gil=True)
        return bo

    def close(self) -> None:
        """Drop every BO, kernel and context (the bindings release them with the Python objects)."""
        self._weights, self._resident, self._insts, self._kernels, self._params_free = {}, {}, {}, {}, []
        self._contexts, self._abandoned, self._workspaces, self._dev = {}, [], [], None

    # -- memory ---------------------------------------------------------------------------------------
    def alloc(self, nbytes: int) -> XrtBuffer:
        if self._dev is None:
            raise DeviceError("device is not loaded")
        bo = self.xrt.bo(self._dev, max(nbytes, 1), self.xrt.bo.flags.host_only, self._group)
        self.buffers_live += 1
        return XrtBuffer(bo, nbytes)

    def free(self, buf: XrtBuffer) -> None:
        if not buf.freed:
            buf.freed, buf.host, buf.bo = True, np.empty(0, np.uint8), None
            self.buffers_live -= 1

    def host_view(self, buf: XrtBuffer) -> np.ndarray:
        return buf.host

    def _sync(self, bo: Any, direction: Any, nbytes: int, offset: int, yield_gil: bool = False) -> None:
        for size, off in chunks(nbytes, offset):
            bo.sync(direction, size, off)
            if yield_gil:
                time.sleep(0)

    def to_device(self, dst: BufferView, src: np.ndarray) -> None:
        buf, n = live(dst.buffer), dst.spec.nbytes
        h = buf.host[dst.offset : dst.offset + n]
        if h.ctypes.data != src.ctypes.data:  # zero-copy staging already wrote the BO's memory
            gil_copy(h, src)  # keeps the GIL: no re-acquire behind worker threads (see gil_copy)
        self._sync(buf.bo, self._to_dev, n, dst.offset)

    def from_device(self, src: BufferView, dst: np.ndarray) -> None:
        buf, n = live(src.buffer), src.spec.nbytes
        self._sync(buf.bo, self._from_dev, n, src.offset)
        h = buf.host[src.offset : src.offset + n]
        if h.ctypes.data != dst.ctypes.data:
            gil_copy(dst, h)

    # -- kernels --------------------------------------------------------------------------------------
    def launch(self, op: str, params: Mapping[str, Any], inputs: Sequence[BufferView],
               outputs: Sequence[BufferView], tensors: Mapping[str, BufferView], lane: int) -> XrtRun:
        if self._program is None:
            raise DeviceError("device has no program loaded")
        if not 0 <= lane < self.lanes:
            raise DeviceError(f"lane {lane} out of range 0..{self.lanes - 1}")
        self._reap()
        run = XrtRun(op, lane)
        spec = self.manifest.ops.get(op)
        if spec is None:
            run.host_call = (params, list(inputs), list(outputs), dict(tensors))
            return run
        values = {**self._constants, **{k: int(v) for k, v in params.items() if isinstance(v, (int, bool, np.integer))}}
        tviews = list(tensors.values())
        bos = [self._arg_bo(a, run, values, inputs, outputs, tviews) for a in spec.args]
        if len(bos) > self._nargs[op] - 3:  # XRT indexes past its argument table: a crash, not an error
            raise DeviceError(f"op {op!r}: {len(bos)} BOs for a kernel taking at most {self._nargs[op] - 3}")
        ibo, ninstr = self._insts[(op, lane)]
        run.t0 = time.perf_counter()
        run.xrt_run = self._kernels[(op, lane)](3, ibo, ninstr, *bos)
        return run

    def _arg_bo(self, a: ArgSpec, run: XrtRun, values: Mapping[str, int], inputs: Sequence[BufferView],
                outputs: Sequence[BufferView], tensors: Sequence[BufferView]) -> Any:
        if a.source == "params":
            missing = [f for f in a.fields if f not in values]
            if missing:
                raise DeviceError(f"op {run.op!r}: no value for params {missing} (tile params: {sorted(values)})")
            words = np.array([values[f] for f in a.fields], np.int32)
            bo = self._params_free.pop() if self._params_free else \
                self.xrt.bo(self._dev, 64 * -(-words.nbytes // 64), self.xrt.bo.flags.host_only, self._group)
            bo.write(words, 0)
            bo.sync(self._to_dev, words.nbytes, 0)
            run.params_bo = bo
            return bo
        if a.source in ("weight", "pack"):
            fast = (id(a), tuple(values.get(k) for k in a.placeholders))  # the manifest outlives this device
            bo = self._resident.get(fast)
            if bo is None:
                try:
                    key: tuple[Any, ...] = (a.pattern.format_map(values), a.dtype) if a.source == "weight" else \
                        (tuple(p.format_map(values) for p, _ in a.parts), tuple(dt for _, dt in a.parts), a.align)
                except KeyError as exc:
                    raise DeviceError(f"op {run.op!r}: no tile parameter {exc} for a weight pattern") from None
                bo = self._weights.get(key)
                if bo is None:
                    raise DeviceError(f"op {run.op!r}: no resident weight {key[0]!r}")
                self._resident[fast] = bo
            return bo
        views = {"input": inputs, "output": outputs, "tensor": tensors}[a.source]
        if a.index >= len(views):
            raise DeviceError(f"op {run.op!r}: the tile has no {a.source} {a.index}")
        v = views[a.index]
        buf = live(v.buffer)
        if a.source == "tensor":
            if buf.host_dirty:  # the host CPU wrote it (a host op): make the device copy current first
                self._sync(buf.bo, self._to_dev, buf.nbytes, 0)
                buf.host_dirty = False
            if a.device_writes:
                run.written.append(buf)
        if v.offset == 0:
            return buf.bo
        return self.xrt.bo(buf.bo, v.spec.nbytes, v.offset)

    def wait(self, run: XrtRun, timeout_s: float | None = None) -> bool:
        if run.done:
            return True
        if run.host_call is not None:
            self._run_host(run)
            return True
        xr, deadline = run.xrt_run, time.perf_counter() + (timeout_s if timeout_s is not None else self.timeout_s)
        while True:
            state = xr.state()
            if int(state) in _TERMINAL:
                break
            left = deadline - time.perf_counter()
            if left <= 0:
                self._abandoned.append(run)
                raise DeviceError(f"{self.name}: op {run.op!r} on lane {run.lane} did not complete within "
                                  f"{timeout_s or self.timeout_s:g} s (last state {state})")
            if self.wait_strategy == "poll":
                time.sleep(self.poll_interval_s)
            elif self.wait_strategy == "slices":
                xr.wait(1)  # holds the GIL for at most 1 ms
                time.sleep(0)
            else:
                xr.wait(max(1, int(left * 1000)))  # naive: the GIL stays held for the whole run
        run.timing, run.done = (run.t0, time.perf_counter()), True
        self._release_params(run)
        if state != self.xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise DeviceError(f"{self.name}: op {run.op!r} on lane {run.lane} ended in {state}")
        for buf in run.written:
            buf.dev_dirty = True
        return True

    def _run_host(self, run: XrtRun) -> None:
        assert self._program is not None and run.host_call is not None
        params, ins, outs, tensors = run.host_call
        with self._lane_locks[run.lane]:
            if self._workspaces[run.lane] is None:
                self._workspaces[run.lane] = self._program.make_workspace()
            t0 = time.perf_counter()
            try:
                for v in tensors.values():
                    buf = live(v.buffer)
                    if buf.dev_dirty:  # the NPU wrote it: fetch the device copy first
                        self._sync(buf.bo, self._from_dev, buf.nbytes, 0, yield_gil=True)
                        buf.dev_dirty = False
                self._program.run(run.op, self._program.resident, self._workspaces[run.lane], params,
                                  [typed(v) for v in ins], [typed(v) for v in outs],
                                  {k: typed(v) for k, v in tensors.items()})
                for v in tensors.values():
                    live(v.buffer).host_dirty = True
                for v in outs:
                    self._sync(live(v.buffer).bo, self._to_dev, v.spec.nbytes, v.offset, yield_gil=True)
            finally:
                run.timing, run.done, run.host_call = (t0, time.perf_counter()), True, None

    def _release_params(self, run: XrtRun) -> None:
        if run.params_bo is not None:
            self._params_free.append(run.params_bo)
            run.params_bo = None

    def _reap(self) -> None:
        """Recycle the params BOs of timed-out runs once the device has finished with them."""
        keep = []
        for r in self._abandoned:
            if int(r.xrt_run.state()) in _TERMINAL:
                self._release_params(r)
            else:
                keep.append(r)
        self._abandoned = keep


def make_xrt_device(backend: str, *, lanes: int = 1, manifest: str | Path | None = None,
                    pyxrt: ModuleType | None = None, device_index: int = 0, sim_config: Any = None,
                    poll_interval_s: float = 1e-4, timeout_s: float = 10.0, wait_strategy: str = "poll",
                    max_contexts: int | None = None) -> XrtDevice:
    """The device for ``backend`` ``"xrt"`` (real pyxrt, or ``pyxrt=`` a module) or ``"sim"`` (the stand-in).

    ``manifest`` defaults to the packaged one for ``"sim"`` and is required for ``"xrt"``. ``sim_config``
    (a :class:`~aiowhisper_npu.sim.SimConfig`) configures the stand-in made for ``"sim"``; an injected
    ``pyxrt`` comes configured (``new_pyxrt(config)``).
    """
    if backend not in ("xrt", "sim"):
        raise BackendUnavailable(f"make_xrt_device handles 'xrt' and 'sim', not {backend!r}")
    if pyxrt is not None:
        if sim_config is not None:  # the backend uses pyxrt's own names only: configure a stand-in up front
            raise ValueError("pass sim_config or a stand-in already made with aiowhisper_npu.sim.new_pyxrt("
                             "sim_config) as pyxrt, not both")
        xrt = pyxrt
    elif backend == "sim":
        from ..sim import new_pyxrt

        xrt = new_pyxrt(sim_config)
    else:
        if sim_config is not None:
            raise ValueError("sim_config applies to backend='sim' (or an injected stand-in), not the real pyxrt")
        xrt = import_pyxrt()
    if manifest is None:
        if backend == "xrt":
            raise BackendUnavailable("backend 'xrt' needs manifest=<path to a kernel manifest JSON> naming your "
                                     "compiled xclbins and kernels (schema: docs/manifest.md)")
        from ..sim import DEFAULT_MANIFEST

        manifest = DEFAULT_MANIFEST
    return XrtDevice(xrt, load_manifest(manifest), name=backend, lanes=lanes, device_index=device_index,
                     poll_interval_s=poll_interval_s, timeout_s=timeout_s, wait_strategy=wait_strategy,
                     max_contexts=max_contexts)
