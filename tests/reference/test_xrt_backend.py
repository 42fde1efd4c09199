"""The XRT backend on the simulated NPU (``backend="sim"``) and on the stand-in injected as ``pyxrt``.

(a) numerics vs the CPU backend, and CTranslate2 decoding the same text; (b) the event loop stays
responsive during a sim encode, and a naive GIL-holding ``run.wait()`` breaks that; (c) pipeline makespan
against the bound computed from the SimConfig; (d) typed errors: missing pyxrt, bad manifests, failed and
timed-out runs, and the runtime serving the next request; (e) ``backend="xrt"`` code paths on the stand-in.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.devices.manifest import ManifestError
from aiowhisper_npu.devices.xrt import XrtDevice, make_xrt_device
from aiowhisper_npu.encoder.plan import EncoderProgram
from aiowhisper_npu.pipeline.pipeline import Pipeline
from aiowhisper_npu.pipeline.pool import BufferPool
from aiowhisper_npu.pipeline.stats import StatsRecorder
from aiowhisper_npu.sim import DATA_DIR, DEFAULT_MANIFEST, SimConfig, new_pyxrt
from aiowhisper_npu.tiles import ArraySpec, Tile, slot_nbytes

DATA = Path(__file__).parents[1] / "data"
CLIP = "door.wav"
ROWS = 300  # 5 row tiles: 45 tiles per window for tiny.en
REL_L2_BF16 = 1e-2  # measured ≈ 4e-3 for tiny.en with bf16 GEMM operands, fp32 accumulation


@pytest.fixture(scope="module")
def model() -> aw.WhisperModel:
    return aw.load_model("tiny.en")


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return aw.load_audio(DATA / CLIP)


async def _encode(model: aw.WhisperModel, audio: np.ndarray, **kw: Any) -> np.ndarray:
    async with aw.Runtime(model, **kw) as rt:
        out = await rt.encode(audio)
        assert rt.buffer_pool.in_use == 0
        return out.hidden_states


@pytest.fixture(scope="module")
def cpu_hidden(model: aw.WhisperModel, audio: np.ndarray) -> np.ndarray:
    return anyio.run(lambda: _encode(model, audio, backend="cpu", tile_rows=ROWS))


@pytest.fixture(scope="module")
def sim_hidden(model: aw.WhisperModel, audio: np.ndarray) -> np.ndarray:
    return anyio.run(lambda: _encode(model, audio, backend="sim", tile_rows=ROWS))


def _rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# -- (a) numerics -------------------------------------------------------------------------------------------

def test_sim_encoder_matches_cpu_within_bf16_tolerance(cpu_hidden: np.ndarray, sim_hidden: np.ndarray) -> None:
    err = _rel_l2(sim_hidden, cpu_hidden)
    assert 1e-5 < err <= REL_L2_BF16  # really bf16 (not bit-identical), and close
    assert np.isfinite(sim_hidden).all()


def test_ctranslate2_decodes_the_same_text(model: aw.WhisperModel, cpu_hidden: np.ndarray,
                                           sim_hidden: np.ndarray) -> None:
    ctranslate2 = pytest.importorskip("ctranslate2")
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(Path(model.path) / "tokenizer.json"))
    prompt = [tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]
    assert prompt == [50257, 50362]  # English-only model: no language or task token
    whisper = ctranslate2.models.Whisper(str(model.path), compute_type="float32", intra_threads=2)

    def decode(h: np.ndarray) -> str:
        res = whisper.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(h)), [prompt], beam_size=1)
        return str(tok.decode(res[0].sequences_ids[0])).strip()

    expected = json.loads((DATA / "clips.json").read_text())[CLIP]
    assert decode(cpu_hidden) == expected
    assert decode(sim_hidden) == decode(cpu_hidden)


# -- (b) the event loop stays responsive ----------------------------------------------------------------------

SLOW = SimConfig(op_time_s={"stem": 0.02, "qkv": 0.02, "attn_mlp": 0.02})  # 20 ms kernels
TIMING_ONLY = dataclasses.replace(SLOW, numerics=False)


async def _ticker_p99(model: aw.WhisperModel, audio: np.ndarray, naive: bool, cfg: SimConfig = SLOW) -> float:
    late: list[float] = []
    async with aw.Runtime(model, backend="sim", tile_rows=ROWS, sim_config=cfg) as rt:
        if naive:  # the naive design: await to_thread(run.wait) -- pyxrt holds the GIL inside it
            def naive_wait(run: Any, timeout_s: float | None = None) -> bool:
                if run.xrt_run.wait() != 4:
                    raise aw.DeviceError("run failed")
                run.timing = (run.t0, time.perf_counter())
                return True
            rt.device.wait = naive_wait  # type: ignore[method-assign]
        done = anyio.Event()

        async def ticker() -> None:
            while not done.is_set():
                t = time.perf_counter()
                await anyio.sleep(0.001)
                late.append(time.perf_counter() - t - 0.001)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await anyio.sleep(0.01)
            await rt.encode(audio)
            done.set()
    return float(np.percentile(late, 99))


@pytest.mark.slow
def test_event_loop_stays_responsive_during_sim_encode(model: aw.WhisperModel, audio: np.ndarray) -> None:
    # best of 2 for the polling design: the machine is shared, and other load only adds lateness
    good = min(anyio.run(_ticker_p99, model, audio, False) for _ in range(2))
    good_timing = min(anyio.run(_ticker_p99, model, audio, False, TIMING_ONLY) for _ in range(2))
    # The naive variant runs timing-only: the host-CPU numerics (a simulator artifact) release the GIL and
    # would dilute the frozen periods; the modeled 20 ms per run is what a real NPU would take.
    naive = anyio.run(_ticker_p99, model, audio, True, TIMING_ONLY)
    print(f"ticker p99 lateness: polling {good * 1e3:.2f} ms (timing-only {good_timing * 1e3:.2f} ms), "
          f"naive run.wait() {naive * 1e3:.2f} ms")
    # Bounds relative to the modelled kernel (20 ms): a polling wait must never freeze the loop for as long as
    # half a kernel (measured idle: 2.6-4.7 ms; the numerics variant adds the simulator's own GIL-holding host
    # work), while the naive wait freezes it for at least most of one (measured 39-43 ms).
    kernel_s = SLOW.op_time_s["qkv"]
    assert good <= kernel_s / 2 and good_timing <= kernel_s / 2
    assert naive > 0.75 * kernel_s  # the test can fail: a GIL-holding wait freezes the loop for a whole kernel
    assert naive > 3 * good_timing


# -- (c) makespan against the model's own bound ---------------------------------------------------------------

class _CopyProgram:
    """A generic one-op program: ``work`` copies its input to its output (negligible numerics)."""

    ops = ("work",)
    resident: Mapping[str, np.ndarray] = {}

    def make_workspace(self) -> None:
        return None

    def run(self, op: str, resident: Mapping[str, np.ndarray], workspace: Any, params: Mapping[str, Any],
            inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray], tensors: Mapping[str, np.ndarray]) -> None:
        outputs[0][...] = inputs[0]


class _CopyJob:
    def __init__(self, n: int, elems: int, prep_s: float):
        self.tiles = tuple(Tile(i, "work", (), (ArraySpec((elems,)),), (ArraySpec((elems,)),)) for i in range(n))
        self.tensor_specs: dict[str, ArraySpec] = {}
        self.prep_s = prep_s
        self.seen = np.full(n, -1.0)

    def prepare(self, tile: Tile, host_in: Sequence[np.ndarray]) -> None:
        end = time.perf_counter() + self.prep_s  # host prep work on the loop
        host_in[0][...] = tile.index
        while time.perf_counter() < end:
            pass

    def commit(self, tile: Tile, host_out: Sequence[np.ndarray]) -> None:
        self.seen[tile.index] = host_out[0][-1]


def _copy_manifest(tmp: Path, kernel_s: float) -> Path:
    xclbin = {"format": "aiowhisper-sim-xclbin", "version": 1, "uuid": "c0ffee00-0000-4000-8000-000000000002",
              "kernels": [{"name": "work_kernel", "op": "work", "impl": "copy", "timing": {"fixed_s": kernel_s},
                           "args": [{"name": "a", "dtype": "float32"},
                                    {"name": "c", "dtype": "float32", "access": "write"}]}]}
    (tmp / "work.xclbin").write_text(json.dumps(xclbin))
    (tmp / "work.insts.txt").write_text("06030100\n00000105\n00000004\n")  # the legacy hex format
    manifest = {"format": "aiowhisper-npu-manifest", "version": 1,
                "ops": {"work": {"xclbin": "work.xclbin", "kernel": "work_kernel", "insts": "work.insts.txt",
                                 "args": [{"input": 0}, {"output": 0}]}}}
    path = tmp / "work.json"
    path.write_text(json.dumps(manifest))
    return path


async def _makespan(dev: XrtDevice, job: _CopyJob, depth: int) -> tuple[float, aw.PipelineStats]:
    ins, outs = slot_nbytes(job.tiles)
    pool = BufferPool(dev, ins, outs, depth)
    pipeline = Pipeline(dev, pool)
    rec = StatsRecorder()
    async with anyio.create_task_group() as tg:
        await tg.start(pipeline.serve)
        t0 = time.perf_counter()
        await pipeline.run([job], rec)
        wall = time.perf_counter() - t0
        tg.cancel_scope.cancel()
    pool.close()
    assert pool.in_use == 0
    return wall, rec.snapshot()


def test_pipeline_makespan_meets_the_model_bound(tmp_path: Path) -> None:
    n, elems, prep_s, kernel_s = 20, 4096, 1e-3, 20e-3
    cfg = SimConfig()
    dev = make_xrt_device("sim", manifest=_copy_manifest(tmp_path, kernel_s), sim_config=cfg)
    dev.load(_CopyProgram())
    nbytes = 4 * elems
    sync = cfg.sync_seconds(nbytes)  # to_device and from_device each sync one tile buffer
    kernel = cfg.submit_seconds() + cfg.run_seconds(cfg.time_scale * kernel_s, 2 * nbytes) + dev.poll_interval_s
    host = prep_s + 2 * sync
    assert host < kernel  # host stages faster than the kernel: the kernel is the bottleneck
    fill = host
    bound, serial = n * kernel + fill, n * (host + kernel)
    results: dict[int, tuple[float, aw.PipelineStats]] = {}
    for depth in (1, 2, 3):
        for _attempt in range(3):  # best of 3: the machine is shared, and a loaded CPU only adds time
            job = _CopyJob(n, elems, prep_s)
            wall, stats = anyio.run(_makespan, dev, job, depth)
            assert np.array_equal(job.seen, np.arange(n))  # every tile's own data came back
            if depth > 1:
                assert stats.stalls == 0  # host stages faster than the kernel: the kernel never waits
            if depth not in results or wall < results[depth][0]:
                results[depth] = (wall, stats)
            if depth == 1 or wall <= 1.05 * bound:
                break
    print(f"makespan: depth1 {results[1][0] * 1e3:.1f} ms (serial sum {serial * 1e3:.1f}), depth2 "
          f"{results[2][0] * 1e3:.1f} ms, depth3 {results[3][0] * 1e3:.1f} ms, bound {1.05 * bound * 1e3:.1f} ms")
    assert results[2][0] <= 1.05 * bound and results[3][0] <= 1.05 * bound
    wall1, stats1 = results[1]
    assert 0.97 * serial <= wall1 <= 1.3 * serial  # depth 1: the stages' serial sum
    assert stats1.stalls >= n - 1
    assert results[2][0] < wall1 - 0.6 * n * host  # the overlap hides most of the host time
    dev.close()


# -- (d) typed errors, and the runtime keeps serving ----------------------------------------------------------

def test_missing_pyxrt_is_backend_unavailable(model: aw.WhisperModel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyxrt", None)  # import pyxrt -> ImportError (ModuleNotFoundError)

    async def main() -> None:
        async with aw.Runtime(model, backend="xrt"):
            pass

    with pytest.raises(aw.BackendUnavailable) as exc:
        anyio.run(main)
    msg = str(exc.value)
    assert "source /opt/xilinx/xrt/setup.sh" in msg and "PYTHONPATH" in msg
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in msg and "backend='sim'" in msg


def test_pyxrt_built_for_another_python(monkeypatch: pytest.MonkeyPatch) -> None:
    class Finder:
        def find_spec(self, name: str, *args: Any) -> None:
            if name == "pyxrt":
                raise ImportError("pyxrt.cpython-313-x86_64-linux-gnu.so: "
                                  "undefined symbol: _PyThreadState_UncheckedGet")

    monkeypatch.delitem(sys.modules, "pyxrt", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    with pytest.raises(aw.BackendUnavailable, match=r"cpython-3\d+.*setup.sh") as exc:
        make_xrt_device("xrt", manifest=DEFAULT_MANIFEST)
    assert "failed to load" in str(exc.value) and "LD_LIBRARY_PATH" in str(exc.value)


def _manifest_copy(tmp: Path, edit: Any) -> Path:
    for f in DATA_DIR.iterdir():
        shutil.copy(f, tmp / f.name)
    doc = json.loads((tmp / "manifest.json").read_text())
    edit(doc)
    (tmp / "manifest.json").write_text(json.dumps(doc))
    return tmp / "manifest.json"


BAD = {
    "schema": (lambda d: d["ops"]["qkv"].pop("kernel"), "'kernel' must be"),
    "unknown op": (lambda d: d["ops"].__setitem__("conv9", d["ops"]["qkv"]), "op 'conv9'"),
    "missing insts": (lambda d: d["ops"]["qkv"].__setitem__("insts", "nope.bin"), "insts file"),
    "missing xclbin": (lambda d: d["ops"]["stem"].__setitem__("xclbin", "nope.xclbin"), "xclbin file"),
    "missing kernel": (lambda d: d["ops"]["qkv"].__setitem__("kernel", "MLIR_AIE"), "no kernel 'MLIR_AIE'"),
    "arg count": (lambda d: d["ops"]["attn_mlp"]["args"].append({"input": 0}),
                  "op 'attn_mlp': the manifest passes 6 BOs but kernel 'whisper_attn_mlp' takes at most 5"),
    "int8": (lambda d: d["ops"]["qkv"]["args"][2]["pack"][0].__setitem__("dtype", "int8"), "int8 is not supported"),
    "tile_rows": (lambda d: d["ops"]["qkv"].__setitem__("tile_rows", 64), "tile_rows=64"),
    "weight": (lambda d: d["ops"]["qkv"]["args"][2]["pack"][0].__setitem__("weight", "{layer}.wq"),
               "no resident weight '0.wq'"),
    "ninstr": (lambda d: d["ops"]["stem"].__setitem__("ninstr", "instructions"), "'ninstr' must be one of"),
    "bad json": (lambda d: d.clear(), "format"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifest_fails_at_start_up(model: aw.WhisperModel, tmp_path: Path, case: str) -> None:
    edit, match = BAD[case]
    path = _manifest_copy(tmp_path, edit)

    async def main() -> None:
        async with aw.Runtime(model, backend="sim", tile_rows=ROWS, manifest=path):
            raise AssertionError("start-up should have failed")

    with pytest.raises(ManifestError, match=match) as exc:
        anyio.run(main)
    assert isinstance(exc.value, aw.BackendUnavailable)


def test_too_many_contexts_is_a_start_up_error(model: aw.WhisperModel) -> None:
    dev = make_xrt_device("sim", lanes=7)  # one xclbin x 7 lanes > 6 contexts on Phoenix
    with pytest.raises(aw.BackendUnavailable, match="needs 7 hardware contexts"):
        dev.load(EncoderProgram(model, ROWS))
    dev = make_xrt_device("sim", lanes=7, max_contexts=16)  # skip the pre-check: the driver refuses
    with pytest.raises(aw.BackendUnavailable, match="CREATE_HWCTX IOCTL failed"):
        dev.load(EncoderProgram(model, ROWS))


FAULTY_RUN = 7  # device-wide run index (submission order) that the simulated NPU fails


@pytest.mark.parametrize("fault", ["error", "abort", "timeout", "deadline"])
def test_failed_or_timed_out_run_fails_only_its_request(model: aw.WhisperModel, audio: np.ndarray,
                                                        sim_hidden: np.ndarray, fault: str) -> None:
    """Two requests share the runtime; run 8 on the NPU ends in ERROR or ABORT, or hangs until the driver's
    watchdog reports TIMEOUT ("timeout"), or past the backend's own 0.2 s deadline ("deadline"). Only the
    request owning that run fails, while the other is in flight; the other is served exactly, every slot and
    device buffer comes back (mutant "skip freeing a killed job's tensors", tests/README.md), and the
    runtime serves the next request.
    """
    cfg = SimConfig(faults={FAULTY_RUN: "timeout" if fault == "deadline" else fault}, watchdog_s=0.4)
    timeout_s = 0.2 if fault == "deadline" else 10.0  # "deadline": the backend's own timeout fires first

    async def main() -> None:
        async with aw.Runtime(model, backend="sim", tile_rows=ROWS, sim_config=cfg, timeout_s=timeout_s) as rt:
            dev = rt.device
            assert isinstance(dev, XrtDevice)
            npu = dev.xrt.sim_device(0)
            hung: list[Any] = []
            launch, wait = dev.launch, dev.wait

            def counting_launch(*args: Any) -> Any:
                before = npu.runs_submitted
                run = launch(*args)
                if before <= FAULTY_RUN < npu.runs_submitted:
                    hung.append(run)
                return run

            def deadline_wait(run: Any, timeout: float | None = None) -> bool:
                # The runtime's 0.2 s timeout_s for the hung run only. A run queued behind it on its column
                # cannot start before the watchdog frees the column (0.4 s), so with the one device-wide
                # timeout it times out too, and fails its request -- the other one, typically (seen: both
                # requests fail). That is a limit of the backend's deadline, not what this test is about.
                return wait(run, None if run in hung else 10.0)

            dev.launch = counting_launch  # type: ignore[method-assign]
            if fault == "deadline":
                dev.wait = deadline_wait  # type: ignore[method-assign]
            buffers = dev.buffers_live  # the pool's slots
            mels = aw.log_mel_windows(audio)  # so that both requests are submitted at once
            outcomes: dict[str, Any] = {}
            failed_at: list[float] = []

            async def request(name: str) -> None:
                try:
                    outcomes[name] = await rt.encode_mels(mels)
                except aw.DeviceError as exc:
                    failed_at.append(time.perf_counter())
                    outcomes[name] = exc

            async with anyio.create_task_group() as tg:
                tg.start_soon(request, "first")
                tg.start_soon(request, "second")
            errors = [o for o in outcomes.values() if isinstance(o, aw.DeviceError)]
            served = [o for o in outcomes.values() if not isinstance(o, aw.DeviceError)]
            assert len(errors) == 1 and len(served) == 1, outcomes  # one request failed, the other did not
            assert hung, "the faulty run was never submitted"
            expected = {"error": "ERROR", "abort": "ABORT", "timeout": "TIMEOUT", "deadline": "within 0.2 s"}
            assert expected[fault] in str(errors[0]), errors[0]
            hidden, stats = served[0]
            assert min(e.start for e in stats.timeline) < failed_at[0] < max(e.end for e in stats.timeline), \
                "the served request was not in flight when the other failed"
            assert _rel_l2(hidden, sim_hidden) < 1e-6
            assert rt.buffer_pool.in_use == 0
            assert dev.buffers_live == buffers  # the failed job's device tensors were freed
            out = await rt.encode(audio)  # the same runtime serves the next request
            assert rt.buffer_pool.in_use == 0 and dev.buffers_live == buffers
            assert _rel_l2(out.hidden_states, sim_hidden) < 1e-6

    anyio.run(main)


# -- (e) backend="xrt" code paths on the injected stand-in ---------------------------------------------------

def test_xrt_backend_on_injected_stand_in(model: aw.WhisperModel, audio: np.ndarray, sim_hidden: np.ndarray) -> None:
    xrt = new_pyxrt(SimConfig())
    hidden = anyio.run(lambda: _encode(model, audio, backend="xrt", tile_rows=ROWS, pyxrt=xrt,
                                       manifest=DEFAULT_MANIFEST, zero_copy=True, lanes=2))
    assert _rel_l2(hidden, sim_hidden) < 1e-6  # identical code, identical numbers
    npu = xrt.sim_device(0)
    assert {r.column for r in npu.records} == {0, 1}  # two lanes -> two contexts -> two columns
    import gc

    gc.collect()
    assert npu.contexts_live == 0  # released with the runtime's objects


def test_ops_missing_from_the_manifest_run_on_the_host(model: aw.WhisperModel, audio: np.ndarray,
                                                       tmp_path: Path, cpu_hidden: np.ndarray,
                                                       sim_hidden: np.ndarray) -> None:
    path = _manifest_copy(tmp_path, lambda d: [d["ops"].pop(op) for op in ("stem", "attn_mlp")])
    xrt = new_pyxrt(SimConfig())
    hidden = anyio.run(lambda: _encode(model, audio, backend="xrt", pyxrt=xrt, manifest=path, tile_rows=ROWS))
    assert {r.op for r in xrt.sim_device(0).records} == {"qkv"}  # only qkv went to the NPU
    err = _rel_l2(hidden, cpu_hidden)
    assert 1e-6 < err < _rel_l2(sim_hidden, cpu_hidden)  # bf16 in qkv only: closer to the CPU than all-sim


@pytest.fixture(autouse=True)
def _no_leaked_contexts() -> Iterator[None]:
    yield
    import gc

    gc.collect()
