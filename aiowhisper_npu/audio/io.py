"""Audio in: Whisper's constants, input validation, file loading, resampling and 30 s windows.

Everything the runtime feeds to the log-mel front end is a C-contiguous float32 mono array at
:data:`SAMPLE_RATE`. Arrays are checked by :func:`validate_audio`; files are decoded by :func:`load_audio`,
which reads every WAV flavour with numpy alone and other containers through the optional ``soundfile`` (or
PyAV) packages.
"""

from __future__ import annotations

import math
import os
import struct
import wave
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AudioError

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "HOP_LENGTH",
    "CHUNK_LENGTH",
    "N_SAMPLES",
    "N_FRAMES",
    "validate_audio",
    "load_audio",
    "resample",
    "split_windows",
]

SAMPLE_RATE = 16000  #: Hz; Whisper's only input rate
N_FFT = 400  #: STFT window, 25 ms
HOP_LENGTH = 160  #: STFT hop, 10 ms
CHUNK_LENGTH = 30  #: seconds of audio per encoder window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  #: 480000 samples per window
N_FRAMES = N_SAMPLES // HOP_LENGTH  #: 3000 mel frames per window

_INSTALL_HINT = "install the optional extra: pip install 'aiowhisper-npu[audio]' (soundfile, soxr) or PyAV"
_WAVE_FORMAT_PCM, _WAVE_FORMAT_FLOAT, _WAVE_FORMAT_EXTENSIBLE = 0x0001, 0x0003, 0xFFFE


def validate_audio(x: Any, *, name: str = "audio") -> np.ndarray:
    """Check that ``x`` is finite float mono audio and return it as C-contiguous float32.

    Accepts anything :func:`numpy.asarray` turns into a non-empty 1-D real floating array (float32 and
    float64 in practice). The result may share memory with ``x`` when no conversion was needed.

    Raises:
        AudioError: ``x`` is not array-like, is empty, is not 1-D, is not a float array (integer PCM is
            accepted only through :func:`load_audio`), or holds NaN/inf (also float64 values beyond float32
            range, which become inf).
    """
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists, objects that refuse conversion, ...
        raise AudioError(f"{name}: cannot be converted to a numpy array ({exc})") from exc
    if arr.size == 0:
        raise AudioError(f"{name}: is empty (shape {arr.shape}); need at least one sample")
    if arr.ndim != 1:
        raise AudioError(
            f"{name}: expected a 1-D mono array, got shape {arr.shape}; downmix multi-channel audio first "
            "(e.g. x.mean(axis=1)) or load the file with load_audio(), which downmixes"
        )
    if arr.dtype.kind != "f":
        hint = (
            "; integer PCM is accepted only through load_audio() (or divide by 32768 yourself)"
            if arr.dtype.kind in "iub"
            else ""
        )
        raise AudioError(f"{name}: expected float32 or float64 samples, got dtype {arr.dtype}{hint}")
    with np.errstate(over="ignore"):  # float64 beyond float32 range becomes inf, reported below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        n_nan = int(np.isnan(out[bad]).sum())
        raise AudioError(
            f"{name}: {bad.size} non-finite sample(s) ({n_nan} NaN, {bad.size - n_nan} inf or beyond float32 "
            f"range); first at index {int(bad[0])}"
        )
    return out


def load_audio(path: str | os.PathLike[str], sr: int = SAMPLE_RATE) -> np.ndarray:
    """Decode an audio file to float32 mono at ``sr`` Hz.

    WAV (PCM 8/16/24/32-bit, IEEE float 32/64-bit, WAVE_FORMAT_EXTENSIBLE) needs numpy only. Other formats
    use ``soundfile`` when installed, then PyAV when installed. Channels are averaged. Resampling uses
    ``soxr`` (VHQ) when installed, else the numpy windowed-sinc resampler of :func:`resample`.

    Raises:
        AudioError: the file is missing, unreadable, not decodable with what is installed, or empty.
    """
    if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
        raise AudioError(f"sample rate must be a positive integer, got {sr!r}")
    p = Path(os.fspath(path))
    if not p.is_file():
        raise AudioError(f"{p}: {'is a directory' if p.is_dir() else 'no such file'}")
    try:
        with p.open("rb") as f:
            head = f.read(12)
    except OSError as exc:
        raise AudioError(f"{p}: cannot be read ({exc.strerror or exc})") from exc
    if len(head) == 12 and head[:4] == b"RIFF" and head[8:] == b"WAVE":
        data, rate = _read_wav(p)
    else:
        data, rate = _read_other(p, "not a WAV file")
    if data.shape[0] == 0:
        raise AudioError(f"{p}: contains no audio samples")
    mono = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float64).astype(np.float32)
    mono = resample(mono, rate, int(sr))
    return validate_audio(mono, name=str(p))


def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample 1-D float audio from ``orig_sr`` to ``target_sr`` Hz; returns float32.

    Output length is ``round(len(x) * target_sr / orig_sr)`` (as soxr). Uses ``soxr`` (quality VHQ) when
    installed. The numpy fallback is a Kaiser-windowed sinc (beta 8.96) evaluated polyphase; measured
    response: passband flat to within 0.001 dB up to 90 % of the lower Nyquist frequency (7.2 kHz for
    16 kHz output), -6 dB at 95 % (7.6 kHz), at least 90 dB down from the lower Nyquist frequency (8 kHz)
    on. Linear phase, no delay. About 60 ms per 40 s of 44.1 kHz audio.
    """
    x = np.asarray(x, dtype=np.float32)
    if orig_sr == target_sr:
        return x
    if orig_sr <= 0 or target_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    try:
        import soxr
    except ImportError:
        return _resample_sinc(x, int(orig_sr), int(target_sr))
    return np.asarray(soxr.resample(x, orig_sr, target_sr, quality="VHQ"), dtype=np.float32)


def split_windows(audio: np.ndarray) -> np.ndarray:
    """Cut audio into consecutive 30 s windows, shape ``(n_windows, N_SAMPLES)`` float32.

    The last window is zero-padded; a length that is an exact multiple of :data:`N_SAMPLES` gets no extra
    empty window. Empty audio is an :class:`AudioError` (raised by :func:`validate_audio`).
    """
    x = validate_audio(audio)
    n_windows = -(-x.size // N_SAMPLES)
    out = np.zeros((n_windows, N_SAMPLES), dtype=np.float32)
    out.reshape(-1)[: x.size] = x
    return out


# --------------------------------------------------------------------------------------------- WAV reading


def _read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Read a RIFF/WAVE file as ``(frames, channels)`` float32 and its sample rate."""
    try:  # plain integer PCM: the standard library parses the header
        with wave.open(str(path), "rb") as w:
            ch, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
        return _decode(raw, _WAVE_FORMAT_PCM, ch, width, path), rate
    except (wave.Error, EOFError, struct.error):
        pass  # IEEE float, WAVE_FORMAT_EXTENSIBLE, or damaged: our own parser says which
    tag, ch, rate, width, raw = _parse_riff(path)
    supported = tag == _WAVE_FORMAT_PCM or (tag == _WAVE_FORMAT_FLOAT and width in (4, 8))
    if not supported:
        return _read_other(path, f"unsupported WAV encoding (format tag 0x{tag:04X}, {8 * width}-bit)")
    return _decode(raw, tag, ch, width, path), rate


def _parse_riff(path: Path) -> tuple[int, int, int, int, bytes]:
    """Walk the RIFF chunks; return ``(format_tag, channels, rate, bytes_per_sample, data)``."""
    buf = path.read_bytes()
    pos, fmt, data = 12, None, None
    while pos + 8 <= len(buf) and (fmt is None or data is None):
        cid, size = buf[pos : pos + 4], int.from_bytes(buf[pos + 4 : pos + 8], "little")
        body = buf[pos + 8 : pos + 8 + size]  # a streamed/truncated file gives a short body: keep it
        if cid == b"fmt ":
            fmt = body
        elif cid == b"data":
            data = body
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    if fmt is None or len(fmt) < 16:
        raise AudioError(f"{path}: damaged WAV file (no valid 'fmt ' chunk)")
    if data is None:
        raise AudioError(f"{path}: damaged WAV file (no 'data' chunk)")
    tag, ch, rate, _, block_align, _bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(fmt) >= 26:
        tag = int.from_bytes(fmt[24:26], "little")  # first two bytes of the SubFormat GUID
    if ch == 0 or rate == 0 or block_align == 0 or block_align % ch:
        raise AudioError(f"{path}: damaged WAV header ({ch} channels, {rate} Hz, block {block_align} bytes)")
    return tag, ch, rate, block_align // ch, data


def _decode(raw: bytes, tag: int, ch: int, width: int, path: Path) -> np.ndarray:
    """Interleaved little-endian samples → ``(frames, ch)`` float32 in [-1, 1)."""
    n = len(raw) // (width * ch) * width * ch  # drop a trailing partial frame
    b = np.frombuffer(raw, dtype=np.uint8, count=n)
    if tag == _WAVE_FORMAT_FLOAT:
        x = b.view("<f4" if width == 4 else "<f8").astype(np.float32)
    elif width == 1:  # 8-bit WAV is unsigned
        x = (b.astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = b.view("<i2").astype(np.float32) / 32768.0
    elif width == 3:
        t = b.reshape(-1, 3).astype(np.int32)
        x = (((t[:, 0] | (t[:, 1] << 8) | (t[:, 2] << 16)) << 8) >> 8).astype(np.float32) / 8388608.0
    elif width == 4:
        x = b.view("<i4").astype(np.float32) / 2147483648.0
    else:
        raise AudioError(f"{path}: unsupported WAV sample width ({8 * width}-bit PCM)")
    return x.reshape(-1, ch)


def _read_other(path: Path, why: str) -> tuple[np.ndarray, int]:
    """Decode with soundfile, then PyAV; AudioError naming the file and each reason when both fail."""
    reasons = [why]
    try:
        import soundfile
    except ImportError:
        reasons.append("soundfile is not installed")
    else:
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            return np.asarray(data, dtype=np.float32), int(rate)
        except Exception as exc:
            reasons.append(f"soundfile: {exc}")
    try:
        import av
    except ImportError:
        reasons.append("PyAV is not installed")
    else:
        try:
            return _read_pyav(av, path)
        except Exception as exc:
            reasons.append(f"PyAV: {exc}")
    hint = f"; to read this format {_INSTALL_HINT}" if any("not installed" in r for r in reasons) else ""
    raise AudioError(f"{path}: cannot decode audio ({'; '.join(reasons)}){hint}")


def _read_pyav(av: Any, path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream with PyAV as ``(frames, channels)`` float32."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError("no audio stream")
        stream = container.streams.audio[0]
        to_float = av.AudioResampler(format="fltp")  # keep layout and rate, planar float32
        parts, rate = [], int(stream.rate or 0)
        for frame in container.decode(stream):
            for f in to_float.resample(frame):
                parts.append(f.to_ndarray())
                rate = int(f.sample_rate)
        parts += [f.to_ndarray() for f in to_float.resample(None)]
    if not parts:
        return np.zeros((0, 1), dtype=np.float32), rate
    return np.ascontiguousarray(np.concatenate(parts, axis=1).T, dtype=np.float32), rate


# ---------------------------------------------------------------------------------------- numpy resampler

_PASS, _STOP, _BETA = 0.90, 1.00, 8.96  # band edges as fractions of the lower Nyquist; Kaiser beta (~90 dB)


def _resample_sinc(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase Kaiser-windowed-sinc resampling by ``target_sr / orig_sr`` (see :func:`resample`).

    Output ``n`` sits at input time ``tau = n * down / up``; it is the dot product of the input around
    ``floor(tau)`` with the kernel sampled at the fractional phase of ``tau``. Outputs ``r, r + up, ...``
    share one phase and step ``down`` input samples apart, so each phase is one strided matrix-vector
    product.
    """
    g = math.gcd(orig_sr, target_sr)
    up, down = target_sr // g, orig_sr // g
    ratio = min(1.0, up / down)  # lower Nyquist / input Nyquist
    fc = 0.5 * (_PASS + _STOP) * ratio  # -6 dB cutoff, fraction of input Nyquist
    delta_omega = math.pi * (_STOP - _PASS) * ratio  # transition width, rad per input sample
    half = (90.0 - 8.0) / (2.285 * delta_omega) / 2.0  # Kaiser length estimate / 2, input samples
    m = int(math.ceil(half))
    n_out = (2 * x.size * up + down) // (2 * down)
    xp = np.concatenate([np.zeros(m), x.astype(np.float64), np.zeros(m + 2)])
    y = np.empty(n_out, dtype=np.float64)
    offsets = (m - 1) - np.arange(2 * m, dtype=np.float64)  # tau - j for j = floor(tau) - m + 1 ...
    i0_beta = np.i0(_BETA)
    for r in range(min(up, n_out)):
        frac = (r * down % up) / up
        t = frac + offsets
        w = np.clip(1.0 - (t / half) ** 2, 0.0, None)
        h = np.where(np.abs(t) < half, fc * np.sinc(fc * t) * np.i0(_BETA * np.sqrt(w)) / i0_beta, 0.0)
        h /= h.sum()  # exact unity DC gain on every phase
        count = -(-(n_out - r) // up)
        start = r * down // up + 1  # xp index of the first tap (j0 + m)
        assert start + (count - 1) * down + 2 * m <= xp.size, "resampler read past its padding"
        rows = np.lib.stride_tricks.as_strided(
            xp[start:], shape=(count, 2 * m), strides=(down * xp.itemsize, xp.itemsize), writeable=False
        )
        y[r::up] = rows @ h
    return y.astype(np.float32)
