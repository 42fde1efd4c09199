"""The pyxrt stand-in and the XRT backend against real pyxrt's API surface (``data/pyxrt_surface.json``).

Both ways, for XRT 2.21 and 2.26: the stand-in has nothing that real pyxrt lacks (outside ``sim_*``): no
extra module names, class members, instance attributes, dunders such as value-based ``uuid.__eq__``, enum
members or values, and no arity a real overload lacks; and it lacks nothing the backend uses: the backend
runs on a traced stand-in (start-up, encodes on both wait strategies, host ops, zero-copy), and every pyxrt
name and arity it touched must be real in both versions. A static scan of ``devices/xrt.py`` checks that the
trace saw every ``xrt.``-rooted name the backend's code mentions.
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Iterator

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.devices import xrt as xrt_backend
from aiowhisper_npu.sim import DATA_DIR, DEFAULT_MANIFEST, SimConfig, new_pyxrt
from aiowhisper_npu.sim.enums import PyEnum
from aiowhisper_npu.tiles import ArraySpec, BufferView

DATA = Path(__file__).parents[1] / "data"
SURFACE = json.loads((DATA / "pyxrt_surface.json").read_text())
VERSIONS = tuple(SURFACE["versions"])
Use = tuple[str, str, "int | None"]  # (owner: "" for the module, "bo", "bo.flags", ...; name; arity or None)


# -- what real pyxrt has ------------------------------------------------------------------------------------

def _allowed(version: str) -> dict[str, dict[str, Any]]:
    """owner -> {name: arities ("*" = any, None = not callable)} for one version; owner "" is the module."""
    v = SURFACE["versions"][version]
    out: dict[str, dict[str, Any]] = {"": {}}
    out[""].update(v["functions"])
    out[""].update({c: None for c in v["constants"]})
    out[""].update({m: None for m in v["submodules"]})
    for cls, methods in v["classes"].items():
        out.setdefault(cls, {}).update(methods)
        parent, _, name = cls.rpartition(".")
        out.setdefault(parent, {})[name] = None
    for enum, spec in v["enums"].items():
        parent, _, name = enum.rpartition(".")
        out.setdefault(parent, {})[name] = None
        out[enum] = {**{m: None for m in spec["members"]}, "name": None, "value": None}
        if spec.get("export_values"):
            out[parent].update({m: None for m in spec["members"]})
    return out


ALLOWED = {v: _allowed(v) for v in VERSIONS}


def _real(owner: str, name: str, arity: int | None = None) -> list[str]:
    """The versions in which ``owner.name`` (called with ``arity`` positional arguments) does not exist."""
    missing = []
    for v in VERSIONS:
        names = ALLOWED[v].get(owner, {})
        if name not in names:
            missing.append(v)
        elif arity is not None and names[name] not in ("*", None) and arity not in names[name]:
            missing.append(f"{v} (arity {arity} not in {names[name]})")
    return missing


# -- the stand-in has nothing extra -------------------------------------------------------------------------

_STRUCTURAL = {"__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__slots__", "__annotations__",
               "__firstlineno__", "__static_attributes__"}


def _arities(fn: Any) -> set[int] | None:
    """Positional argument counts ``fn`` accepts (self excluded), or None for ``*args``."""
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in pos if p.default is p.empty)
    return set(range(required, len(pos) + 1))


def _members(owner: str, obj: Any) -> Iterator[tuple[str, str, Any]]:
    """(owner, name, value) for every public member of the stand-in's ``obj``, recursively (classes, enums)."""
    if isinstance(obj, ModuleType):
        names = [n for n in dir(obj) if not n.startswith("_")]
    elif isinstance(obj, type) and issubclass(obj, PyEnum):
        names = [n for n in dir(obj) if not n.startswith("_")]
    else:
        names = [n for n in dir(obj) if not n.startswith("_")] + \
            [n for n in vars(obj) if n.startswith("__") and n not in _STRUCTURAL]
    for name in names:
        if name.startswith("sim_"):
            continue
        value = getattr(obj, name)
        yield owner, name, value
        child = f"{owner}.{name}" if owner else name
        if isinstance(value, type) and value.__module__ in (obj.__name__ if isinstance(obj, ModuleType) else
                                                            obj.__module__, "aiowhisper_npu.sim.enums"):
            if not (isinstance(obj, type) and issubclass(obj, PyEnum)):
                yield from _members(child, value)


def test_stand_in_has_nothing_real_pyxrt_lacks() -> None:
    xrt = new_pyxrt()
    extra = []
    for owner, name, value in _members("", xrt):
        arities = _arities(value) if inspect.isfunction(value) else None
        if inspect.isfunction(value) and owner and arities is not None:
            arities = {a - 1 for a in arities if a > 0}  # a method: self is not an argument
        missing = _real(owner, name)
        for a in sorted(arities or ()):
            missing += _real(owner, name, a)
        if missing:
            extra.append(f"{owner + '.' if owner else ''}{name}: not in pyxrt {sorted(set(missing))}")
    assert not extra, "the stand-in has names real pyxrt lacks (rename them sim_*):\n" + "\n".join(extra)


def test_stand_in_enums_match_real_names_and_values() -> None:
    xrt = new_pyxrt()
    for enum, obj in {"ert_cmd_state": xrt.ert_cmd_state, "xclBOSyncDirection": xrt.xclBOSyncDirection,
                      "xrt_info_device": xrt.xrt_info_device, "bo.flags": xrt.bo.flags}.items():
        have = {n: int(m) for n, m in obj.__members__.items()}
        for v in VERSIONS:
            assert have == SURFACE["versions"][v]["enums"][enum]["members"], (enum, v)
        scoped = SURFACE["versions"][VERSIONS[0]]["enums"][enum]["scoped"]
        first = next(iter(obj.__members__.values()))
        assert (first == int(first)) is (not scoped)  # enum class: never equal to an int


def test_stand_in_instances_have_no_extra_attributes(tmp_path: Path) -> None:
    """Attributes set on instances (like the old ``hw_context.column``) count too."""
    xrt = new_pyxrt()
    dev = xrt.device(0)
    xb = xrt.xclbin(str(DATA_DIR / "whisper_encoder.xclbin"))
    uuid = dev.register_xclbin(xb)
    ctx = xrt.hw_context(dev, uuid)
    k = xrt.kernel(ctx, "whisper_qkv")
    b = xrt.bo(dev, 64, xrt.bo.host_only, k.group_id(3))
    objs = {"device": dev, "xclbin": xb, "xclbin.xclbinkernel": xb.get_kernels()[0], "uuid": uuid,
            "hw_context": ctx, "kernel": k, "bo": b, "run": xrt.run(k)}
    extra = [f"{owner}.{n}" for owner, obj in objs.items() for n in dir(obj)
             if not n.startswith(("_", "sim_")) and _real(owner, n)]
    assert not extra
    assert xrt.uuid("0badc0de-0000-4000-8000-000000000001") != xrt.uuid("0badc0de-0000-4000-8000-000000000001")


# -- the stand-in lacks nothing the backend uses --------------------------------------------------------------

class _Traced:
    """The stand-in module seen through a recorder of every pyxrt name (and call arity) the backend touches."""

    def __init__(self, target: Any, owner: str, uses: set[Use]):
        object.__setattr__(self, "_t", (target, owner, uses))

    def __getattr__(self, name: str) -> Any:
        target, owner, uses = object.__getattribute__(self, "_t")
        uses.add((owner, name, None))
        value = getattr(target, name)
        if isinstance(value, type):
            return _Traced(value, f"{owner}.{name}" if owner else name, uses)
        if callable(value):
            return _record_calls(value, owner, name, uses)
        return value

    def __call__(self, *args: Any) -> Any:
        target, owner, uses = object.__getattribute__(self, "_t")
        uses.add((owner, "__init__", len(args)))
        return target(*args)


def _record_calls(fn: Any, owner: str, name: str, uses: set[Use]) -> Any:
    def call(*args: Any) -> Any:
        uses.add((owner, name, len(args)))
        return fn(*args)
    return call


def _trace_instances(xrt: ModuleType, uses: set[Use]) -> None:
    """Record attribute uses on instances of the stand-in's classes, from outside the stand-in itself."""
    classes = {"device": xrt.device, "xclbin": xrt.xclbin, "xclbin.xclbinkernel": xrt.xclbin.xclbinkernel,
               "uuid": xrt.uuid, "hw_context": xrt.hw_context, "kernel": xrt.kernel, "run": xrt.run, "bo": xrt.bo}
    for owner, cls in classes.items():
        def getattribute(self: Any, name: str, _owner: str = owner) -> Any:
            value = object.__getattribute__(self, name)
            if (name.startswith("_") and name not in ("__call__",)) or \
                    sys._getframe(1).f_globals.get("__name__") == xrt.__name__:
                return value
            uses.add((_owner, name, None))
            return _record_calls(value, _owner, name, uses) if callable(value) else value

        cls.__getattribute__ = getattribute  # this module object is the test's own machine
        if owner == "kernel":
            real_call = cls.__call__

            def traced_call(self: Any, *args: Any, _real_call: Any = real_call) -> Any:
                uses.add(("kernel", "__call__", len(args)))
                return _real_call(self, *args)

            cls.__call__ = traced_call


def _copy_manifest(tmp: Path) -> Path:
    """A one-op program on a copy kernel (20 ms), for the wait strategies."""
    xclbin = {"format": "aiowhisper-sim-xclbin", "version": 1, "uuid": "c0ffee00-0000-4000-8000-000000000003",
              "kernels": [{"name": "work_kernel", "op": "work", "impl": "copy", "timing": {"fixed_s": 0.02},
                           "args": [{"name": "a", "dtype": "float32"},
                                    {"name": "c", "dtype": "float32", "access": "write"}]}]}
    (tmp / "work.xclbin").write_text(json.dumps(xclbin))
    (tmp / "work.insts.txt").write_text("06030100\n00000105\n00000004\n")
    manifest = {"format": "aiowhisper-npu-manifest", "version": 1,
                "ops": {"work": {"xclbin": "work.xclbin", "kernel": "work_kernel", "insts": "work.insts.txt",
                                 "args": [{"input": 0}, {"output": 0}]}}}
    path = tmp / "work.json"
    path.write_text(json.dumps(manifest))
    return path


class _Copy:
    ops = ("work",)
    resident: ClassVar[dict[str, np.ndarray]] = {}

    def make_workspace(self) -> None:
        return None

    def run(self, op: str, resident: Any, workspace: Any, params: Any, inputs: Any, outputs: Any,
            tensors: Any) -> None:
        outputs[0][...] = inputs[0]


@pytest.fixture(scope="module")
def backend_uses(tmp_path_factory: pytest.TempPathFactory) -> set[Use]:
    """Every pyxrt use of the backend over its paths: start-up, encodes (zero-copy, 2 lanes, host ops), the
    "slices" and "blocking" wait strategies, a failed run and the params BOs of a timed-out run."""
    uses: set[Use] = set()
    model = aw.load_model("tiny.en")
    audio = aw.load_audio(DATA / "door.wav")[: 16000 * 5]
    tmp = tmp_path_factory.mktemp("surface")
    partial = json.loads(DEFAULT_MANIFEST.read_text())
    partial["ops"].pop("stem")  # the stem runs on the host: host ops, tensor syncs
    for f in DATA_DIR.iterdir():
        (tmp / f.name).write_bytes(f.read_bytes())
    (tmp / "partial.json").write_text(json.dumps(partial))

    def traced(config: SimConfig | None = None) -> Any:
        xrt = new_pyxrt(config)
        _trace_instances(xrt, uses)
        return _Traced(xrt, "", uses)

    async def encodes() -> None:
        for manifest, kw in ((DEFAULT_MANIFEST, {"zero_copy": True, "lanes": 2}), (tmp / "partial.json", {})):
            async with aw.Runtime(model, backend="xrt", pyxrt=traced(), manifest=manifest, tile_rows=300,
                                  **kw) as rt:
                await rt.encode(audio)
        async with aw.Runtime(model, backend="xrt", pyxrt=traced(SimConfig(faults={3: "error"})),
                              manifest=DEFAULT_MANIFEST, tile_rows=300) as rt:
            with pytest.raises(aw.DeviceError):
                await rt.encode(audio)

    anyio.run(encodes)
    work = _copy_manifest(tmp)
    for strategy in ("slices", "blocking", "poll"):
        hang = {0: "timeout"} if strategy == "poll" else {}  # the first run hangs until the watchdog (1 s)
        dev = xrt_backend.make_xrt_device("xrt", pyxrt=traced(SimConfig(watchdog_s=1.0, faults=hang)),
                                          manifest=work, wait_strategy=strategy)
        dev.load(_Copy())
        buf = dev.alloc(128)
        src, dst = BufferView(buf, ArraySpec((16,)), 64), BufferView(buf, ArraySpec((16,)))  # src: a sub-buffer
        dev.to_device(src, np.arange(16, dtype=np.float32))
        run = dev.launch("work", {}, [src], [dst], {}, 0)
        if strategy == "poll":  # the backend's own deadline: the run is abandoned, its params BO reaped
            with pytest.raises(aw.DeviceError, match="did not complete"):
                dev.wait(run, 0.01)
            dev.wait(dev.launch("work", {}, [src], [dst], {}, 0), 5.0)
        else:
            dev.wait(run)
        out = np.empty(16, np.float32)
        dev.from_device(dst, out)
        assert np.array_equal(out, np.arange(16))
        dev.free(buf)
        dev.close()
    return uses


def test_backend_uses_only_real_pyxrt(backend_uses: set[Use]) -> None:
    not_real = sorted(f"{o + '.' if o else ''}{n} (arity {a}): missing in {m}"
                      for o, n, a in backend_uses if (m := _real(o, n, a)))
    assert not not_real, "the backend uses names or arities real pyxrt lacks:\n" + "\n".join(not_real)
    # what the backend relies on, so a trace that silently missed a path would show
    for use in [("", "device", None), ("xclbin.xclbinkernel", "get_num_args", 0), ("kernel", "__call__", 8),
                ("kernel", "__call__", 7), ("kernel", "group_id", 1), ("bo", "__init__", 4), ("bo", "__init__", 3),
                ("bo", "map", 0), ("bo", "sync", 3), ("run", "state", 0), ("run", "wait", 1),
                ("xrt_info_device", "name", None), ("hw_context", "__init__", 2), ("bo.flags", "cacheable", None)]:
        assert use in backend_uses, use


def _static_xrt_names() -> set[tuple[str, str]]:
    """(owner, name) of every attribute chain rooted at ``xrt`` or ``self.xrt`` in devices/xrt.py."""
    tree = ast.parse(Path(xrt_backend.__file__).read_text())
    out: set[tuple[str, str]] = set()

    def chain(node: ast.AST) -> list[str] | None:
        if isinstance(node, ast.Name):
            return [] if node.id == "xrt" else None
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr == "xrt":
                return []
            base = chain(node.value)
            return None if base is None else [*base, node.attr]
        return None

    for node in ast.walk(tree):
        names = chain(node) if isinstance(node, ast.Attribute) else None
        if names:
            out.add((".".join(names[:-1]), names[-1]))
    return out


def test_trace_covers_every_xrt_name_in_the_backend(backend_uses: set[Use]) -> None:
    seen = {(o, n) for o, n, _ in backend_uses}
    static = _static_xrt_names()
    assert ("bo.flags", "host_only") in static and ("", "hw_context") in static  # the scan works
    assert static <= seen, f"the trace missed {sorted(static - seen)}"
    assert not [n for o, n in static if _real(o, n)]
