"""The XRT backend in mlir-aie's argument convention, on a stand-in as strict as amdxdna.

- the packaged manifest fits aiecc's ``opcode, instr, ninstr, bo0..bo4`` (at most 5 data BOs per launch),
  with unchanged numbers: bf16-close to the CPU backend, and CTranslate2 decodes the same text;
- a manifest that needs more BOs than the xclbin declares fails at start-up, naming the op;
- the ``ninstr`` unit: a bytes-unit kernel runs when the manifest says so and fails its request otherwise;
- packed weights sit at the offsets ``sim.layout`` defines (a kernel expecting another alignment computes
  garbage);
- no path keeps a view of a freed BO: the stand-in counts views outliving their BO, and poisons freed memory.
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import anyio
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import aiowhisper_npu as aw
from aiowhisper_npu.devices.manifest import ManifestError
from aiowhisper_npu.sim import DATA_DIR, DEFAULT_MANIFEST, SimConfig, new_pyxrt
from aiowhisper_npu.sim.layout import MAX_DATA_BOS, pack_offsets
from tests.support import CLIPS, DATA, rel_l2
from tests.support.ct2_reference import CT2Reference

CLIP = "door.wav"
ROWS = 300
REL_L2_BF16 = 1e-2  # as tests/test_xrt_backend.py: measured ≈ 4e-3 for tiny.en
SAME = 1e-6  # the same kernels on the same data


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread() -> Iterator[None]:
    """The sim's numerics run numpy BLAS, whose result bits depend on its thread count (and the CPU backend
    changes that count): pin it, so runs of this module compare like with like."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return aw.load_audio(DATA / CLIP)


async def _encode(model: aw.WhisperModel, audio: np.ndarray, **kw: Any) -> np.ndarray:
    async with aw.Runtime(model, tile_rows=ROWS, **kw) as rt:
        out = await rt.encode(audio)
        assert rt.buffer_pool.in_use == 0
        return out.hidden_states


def _counting(xrt: ModuleType) -> list[tuple[str, int]]:
    """Record (kernel name, data BOs) of every launch on this stand-in module."""
    launches: list[tuple[str, int]] = []
    call = xrt.kernel.__call__

    def counted(self: Any, *args: Any) -> Any:
        launches.append((self._desc.name, len(args) - 3))
        return call(self, *args)

    xrt.kernel.__call__ = counted
    return launches


def _copy_data(tmp: Path, edit_manifest: Callable[[dict], None] | None = None,
               edit_xclbin: Callable[[dict], None] | None = None) -> Path:
    for f in DATA_DIR.iterdir():
        shutil.copy(f, tmp / f.name)
    for name, edit in (("manifest.json", edit_manifest), ("whisper_encoder.xclbin", edit_xclbin)):
        if edit is not None:
            doc = json.loads((tmp / name).read_text())
            edit(doc)
            (tmp / name).write_text(json.dumps(doc))
    return tmp / "manifest.json"


@pytest.fixture(scope="module")
def cpu_hidden(tiny: aw.WhisperModel, audio: np.ndarray) -> np.ndarray:
    return anyio.run(lambda: _encode(tiny, audio, backend="cpu"))


@pytest.fixture(scope="module")
def sim_run(tiny: aw.WhisperModel, audio: np.ndarray) -> tuple[np.ndarray, list[tuple[str, int]]]:
    xrt = new_pyxrt(SimConfig())
    launches = _counting(xrt)
    hidden = anyio.run(lambda: _encode(tiny, audio, backend="xrt", pyxrt=xrt, manifest=DEFAULT_MANIFEST))
    return hidden, launches


def test_default_manifest_fits_aieccs_five_bos(sim_run: tuple[np.ndarray, list[tuple[str, int]]],
                                               cpu_hidden: np.ndarray, ct2_tiny: CT2Reference) -> None:
    hidden, launches = sim_run
    kernels = {k for k, _ in launches}
    assert kernels == {"whisper_stem", "whisper_qkv", "whisper_attn_mlp"}  # every op ran on the NPU
    assert max(n for _, n in launches) == MAX_DATA_BOS == 5
    xrt = new_pyxrt()
    assert {k.get_num_args() for k in xrt.xclbin(str(DATA_DIR / "whisper_encoder.xclbin")).get_kernels()} == {8}
    err = rel_l2(hidden, cpu_hidden)
    assert 1e-5 < err <= REL_L2_BF16  # bf16 operands, as before the packing
    assert ct2_tiny.decode(cpu_hidden[0]) == CLIPS[CLIP]
    assert ct2_tiny.decode(hidden[0]) == ct2_tiny.decode(cpu_hidden[0])


def _unpacked(doc: dict) -> None:
    """The attention op as the manifest had it before packing: one BO per weight (12 BOs)."""
    args = doc["ops"]["attn_mlp"]["args"]
    pack = args.pop(3)
    args[3:3] = [{"weight": p["weight"], "dtype": p["dtype"]} for p in pack["pack"]]


def test_more_bos_than_the_kernel_declares_fail_at_start_up(tiny: aw.WhisperModel, tmp_path: Path) -> None:
    path = _copy_data(tmp_path, _unpacked)

    async def main() -> None:
        async with aw.Runtime(tiny, backend="sim", tile_rows=ROWS, manifest=path):
            raise AssertionError("start-up should have failed")

    with pytest.raises(ManifestError, match=r"op 'attn_mlp': the manifest passes 12 BOs but kernel "
                                            r"'whisper_attn_mlp' takes at most 5"):
        anyio.run(main)


def _bytes_kernel(doc: dict) -> None:
    next(k for k in doc["kernels"] if k["op"] == "qkv")["ninstr"] = "bytes"


@pytest.mark.parametrize("declared", [True, False])
def test_ninstr_in_bytes_runs_only_when_declared(tiny: aw.WhisperModel, audio: np.ndarray, tmp_path: Path,
                                                 sim_run: tuple[np.ndarray, list[tuple[str, int]]],
                                                 declared: bool) -> None:
    """The qkv kernel's firmware counts instructions in bytes; the manifest says so, or does not."""
    def manifest(doc: dict) -> None:
        if declared:
            doc["ops"]["qkv"]["ninstr"] = "bytes"

    path = _copy_data(tmp_path, manifest, _bytes_kernel)
    xrt = new_pyxrt(SimConfig())
    launches = _counting(xrt)

    async def main() -> np.ndarray | None:
        async with aw.Runtime(tiny, backend="xrt", pyxrt=xrt, tile_rows=ROWS, manifest=path) as rt:
            if declared:
                return (await rt.encode(audio)).hidden_states
            with pytest.raises(aw.DeviceError, match="ERT_CMD_STATE_ERROR"):
                await rt.encode(audio)
            assert rt.buffer_pool.in_use == 0
            return None

    hidden = anyio.run(main)
    if declared:
        assert rel_l2(hidden, sim_run[0]) < SAME  # the same kernels, the same numbers
    else:
        runs = [r for r in xrt.sim_device(0).records if r.kernel == "whisper_qkv"]
        assert runs and ("whisper_qkv", 4) in launches  # it was launched, and the device refused it


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the misaligned kernel computes with garbage
def test_pack_offsets_are_the_kernels(tiny: aw.WhisperModel, audio: np.ndarray, tmp_path: Path,
                                      sim_run: tuple[np.ndarray, list[tuple[str, int]]]) -> None:
    """Both sides at 4 KiB alignment agree (same numbers); a kernel built for 64 bytes reads garbage."""
    assert pack_offsets([6, 4, 0, 130], 64) == ([0, 64, 128, 128], 320)
    assert pack_offsets([6, 4], 1) == ([0, 6], 10)

    def align_manifest(doc: dict) -> None:
        for op in doc["ops"].values():
            for a in op["args"]:
                if "pack" in a:
                    a["align"] = 4096

    def align_xclbin(doc: dict) -> None:
        for k in doc["kernels"]:
            for a in k["args"]:
                if a["dtype"] == "packed":
                    a["align"] = 4096

    agreed = anyio.run(lambda: _encode(tiny, audio, backend="sim",
                                       manifest=_copy_data(tmp_path, align_manifest, align_xclbin)))
    assert rel_l2(agreed, sim_run[0]) < SAME
    other = tmp_path / "other"
    other.mkdir()
    wrong = anyio.run(lambda: _encode(tiny, audio, backend="sim", manifest=_copy_data(other, align_manifest)))
    assert not rel_l2(np.nan_to_num(wrong), sim_run[0]) < REL_L2_BF16


@pytest.mark.parametrize("options", [{"zero_copy": True, "lanes": 2}, {"zero_copy": True, "reuse_buffers": False},
                                     {"reuse_buffers": False, "pipeline_depth": 1}])
def test_no_view_outlives_its_bo(tiny: aw.WhisperModel, audio: np.ndarray,
                                 sim_run: tuple[np.ndarray, list[tuple[str, int]]], options: dict) -> None:
    """Zero-copy staging, the pool (fresh buffers per tile), job tensors: the stand-in releases and poisons
    every freed BO's map() views, and counts any still referenced. None may be, and the numbers hold."""
    xrt = new_pyxrt(SimConfig())
    hidden = anyio.run(lambda: _encode(tiny, audio, backend="xrt", pyxrt=xrt, manifest=DEFAULT_MANIFEST,
                                       **options))
    gc.collect()
    npu = xrt.sim_device(0)
    assert npu.views_outliving_free == 0
    assert npu.bos_live == 0  # every BO was freed (and so every view of it checked)
    assert rel_l2(hidden, sim_run[0]) < SAME


def test_no_view_outlives_its_bo_when_a_request_is_cancelled(tiny: aw.WhisperModel, audio: np.ndarray) -> None:
    xrt = new_pyxrt(SimConfig(op_time_s={"attn_mlp": 0.01}))

    async def main() -> None:
        async with aw.Runtime(tiny, backend="xrt", pyxrt=xrt, manifest=DEFAULT_MANIFEST, tile_rows=ROWS,
                              zero_copy=True, reuse_buffers=False) as rt:
            with anyio.move_on_after(0.3):
                await rt.encode(audio)
            assert rt.buffer_pool.in_use == 0

    anyio.run(main)
    gc.collect()
    npu = xrt.sim_device(0)
    assert npu.runs_submitted > 0 and npu.views_outliving_free == 0 and npu.bos_live == 0
