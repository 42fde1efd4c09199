"""CTranslate2-style alignment post-processing (aiowhisper_npu/decoder/alignment.py): its DTW and median
filter against direct scalar transcriptions of CTranslate2's, and the whole of it, over our decoder's
cross-attention scores, against CTranslate2's ``Whisper.align`` on the same encoder output."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import load_audio
from aiowhisper_npu.decoder.alignment import (
    align_from_scores,
    alignment_matrix,
    alignment_tokens,
    median_filter,
    negative_dtw,
    text_token_probs,
)
from aiowhisper_npu.decoder.options import AlignmentResult
from aiowhisper_npu.decoder.tokenizer import Tokenizer
from aiowhisper_npu.transcription.timing import words_from_alignment
from tests.support import DATA


def dtw_reference(x: np.ndarray) -> list[tuple[int, int]]:
    """CTranslate2's negative_dtw, cell by cell (float32 costs)."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, np.float32)
    trace = np.full((n + 1, m + 1), -1)
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = np.float32(-x[i - 1, j - 1]) + c
            trace[i, j] = t
    path = []
    i, j = n, m
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        i, j = (i - 1, j - 1) if t == 0 else (i - 1, j) if t == 1 else (i, j - 1)
    return path[::-1]


def median_reference(x: np.ndarray, width: int) -> np.ndarray:
    """CTranslate2's MedianFilter on the last axis, sample by sample."""
    depth, rank = x.shape[-1], width // 2
    if depth <= rank:
        return x.copy()
    out = np.empty_like(x)
    for idx in np.ndindex(*x.shape[:-1]):
        row = x[idx]
        for j in range(depth):
            window = []
            for k in range(-rank, rank + 1):
                read = abs(j + k)
                if read >= depth:
                    read = depth - (read - depth) - 2
                window.append(row[read])
            out[idx + (j,)] = sorted(window)[rank]
    return out


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (6, 1), (3, 10), (10, 3), (7, 7), (20, 60)])
@pytest.mark.parametrize("ties", [False, True])
def test_dtw_equals_ctranslate2s(shape: tuple[int, int], ties: bool) -> None:
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    for _ in range(5):
        x = rng.integers(-2, 3, size=shape) if ties else rng.normal(size=shape)
        x = x.astype(np.float32)
        assert negative_dtw(x) == dtw_reference(x)


def test_dtw_empty() -> None:
    assert negative_dtw(np.zeros((3, 0), np.float32)) == [] == negative_dtw(np.zeros((0, 4), np.float32))


@pytest.mark.parametrize("width", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 8, 40])
def test_median_filter_equals_ctranslate2s(width: int, depth: int) -> None:
    rng = np.random.default_rng(width * 1000 + depth)
    x = rng.normal(size=(2, 3, depth)).astype(np.float32)
    x[0, 0] = np.round(x[0, 0])  # ties
    np.testing.assert_array_equal(median_filter(x, width), median_reference(x, width))


@pytest.mark.parametrize("width", [0, 2, -1, 8])
def test_median_filter_width_must_be_odd(width: int) -> None:
    with pytest.raises(ValueError, match="odd"):
        median_filter(np.zeros((1, 10), np.float32), width)


@pytest.mark.parametrize("num_frames, n_start", [(3000, 3), (1100, 1), (15, 3)])
def test_alignment_matrix_equals_the_steps(num_frames: int, n_start: int) -> None:
    """Softmax over the first num_frames // 2 positions, per (head, position) standardised over the tokens,
    median-filtered along time, averaged over heads, start-sequence and end-of-text rows dropped."""
    rng = np.random.default_rng(num_frames)
    qk = (rng.normal(size=(5, 12, 1500)) * 4).astype(np.float32)
    w = qk[:, :, : num_frames // 2].astype(np.float64)
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    w = (w - w.mean(1, keepdims=True)) / w.std(1, keepdims=True)
    want = median_reference(w, 7).mean(0)[n_start:-1]
    np.testing.assert_allclose(alignment_matrix(qk, num_frames, n_start), want, atol=2e-5)


def test_alignment_matrix_shape_and_errors() -> None:
    qk = np.random.default_rng(0).normal(size=(4, 10, 1500)).astype(np.float32)
    assert alignment_matrix(qk, 3000, 3).shape == (6, 1500)
    assert alignment_matrix(qk, 501, 3).shape == (6, 250)  # num_frames // 2 positions
    assert alignment_matrix(qk, 1, 3).shape == (6, 0)
    assert alignment_matrix(qk, 9000, 3).shape == (6, 1500)
    with pytest.raises(ValueError):
        alignment_matrix(qk[0], 3000, 3)
    with pytest.raises(ValueError):
        alignment_matrix(qk, 3000, 9)  # no room for <|notimestamps|> and <|endoftext|>
    with pytest.raises(ValueError, match="cover"):
        align_from_scores(qk, np.zeros((10, 60), np.float32), 3, [1, 2], eot=50, num_frames=3000)
    with pytest.raises(ValueError, match="text tokens"):
        align_from_scores(qk, np.zeros((10, 60), np.float32), 3, [1, 2, 3, 70, 5], eot=50, num_frames=3000)


def test_text_token_probs_layouts() -> None:
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(9, 60)).astype(np.float32)
    text = [4, 17, 2, 33]  # start sequence of 3: positions 3..6 predict the text
    full = text_token_probs(logits, 3, text, eot=50)
    assert full == text_token_probs(logits[3:7], 3, text, eot=50)
    p = np.exp(logits[3:7, :50].astype(np.float64))
    np.testing.assert_allclose(full, (p / p.sum(1, keepdims=True))[np.arange(4), text], rtol=1e-6)
    assert text_token_probs(logits, 3, [], eot=50) == []
    with pytest.raises(ValueError, match="positions"):
        text_token_probs(logits[:5], 3, text, eot=50)


def test_words_from_a_path_that_misses_the_first_rows(tiny: aw.WhisperModel) -> None:
    """With fewer frames than tokens CTranslate2's path can stop before the first rows (faster-whisper then
    fails on an IndexError): those rows are put at the window's start."""
    tok = Tokenizer.for_model(tiny.path, tiny.dims.n_vocab)
    text = tok.encode(" one two three four")
    path = [(2, 0), (3, 0), (4, 1)]
    words = words_from_alignment(tok, text, AlignmentResult(path, [0.5] * len(text)))
    assert [w.word for w in words] == [" one", " two", " three", " four"]
    assert [float(w.start) for w in words] == [0.0, 0.0, 0.0, 0.0]
    assert float(words[-1].end) == pytest.approx(0.02)


class AlignmentPeer:
    """CTranslate2's align and ours (our decoder forward + align_from_scores) on one encoder output."""

    def __init__(self, model: aw.WhisperModel):
        import ctranslate2

        from aiowhisper_npu.decoder import kernels as dk

        self.ct2 = ctranslate2
        self.model = model
        self.whisper = ctranslate2.models.Whisper(str(model.path), compute_type="float32", intra_threads=2)
        self.dec = dk.prepare_decoder(model.decoder, model.dims)
        self.tok = Tokenizer.for_model(model.path, model.dims.n_vocab, language="en")

    def compare(self, audio: np.ndarray, num_frames: int) -> tuple[AlignmentResult, Any]:
        from aiowhisper_npu.decoder import kernels as dk
        from aiowhisper_npu.decoder.cache import KVCache
        from aiowhisper_npu.transcription.features import audio_features, window_features

        ct2, tok, dims = self.ct2, self.tok, self.model.dims
        mel = window_features(audio_features(audio), 0, num_frames)
        enc = np.array(self.whisper.encode(ct2.StorageView.from_array(mel[None]), to_cpu=True))[0]
        sv = ct2.StorageView.from_array(enc[None])
        prompt = list(tok.sot_sequence) + [tok.no_timestamps]
        text = [t for t in self.whisper.generate(sv, [prompt], beam_size=1)[0].sequences_ids[0] if t < tok.eot]
        want = self.whisper.align(sv, list(tok.sot_sequence), [text], num_frames)[0]
        cache = KVCache(dk.cross_cache(self.dec, enc), dims.n_text_layer, dims.n_text_head, dims.text_head_dim,
                        dims.n_text_ctx)
        tokens = alignment_tokens(tok.sot_sequence, text, tok.no_timestamps, tok.eot)
        out = dk.forward(self.dec, [dk.Pass(cache, np.array([tokens]), logits_at=range(len(tokens)),
                                            cross_heads=self.model.alignment_heads)])[0]
        got = align_from_scores(out.cross_qk, out.logits[0], len(tok.sot_sequence), text, tok.eot, num_frames)
        return got, want


@pytest.fixture(scope="module")
def align_tiny(tiny: aw.WhisperModel) -> AlignmentPeer:
    return AlignmentPeer(tiny)


def assert_alignment_close(got: AlignmentResult, want: Any) -> None:
    want_path = [tuple(p) for p in want.alignments]
    assert len(got.alignments) == len(want_path)
    differ = sum(a != b for a, b in zip(got.alignments, want_path))
    assert differ <= len(want_path) // 100, f"{differ} of {len(want_path)} path cells differ"
    np.testing.assert_allclose(got.text_token_probs, want.text_token_probs, atol=1e-3)


@pytest.mark.parametrize("name, num_frames", [("jfk.wav", 1100), ("quick_fox.wav", 355)])
def test_align_from_scores_equals_ctranslate2(align_tiny: AlignmentPeer, name: str, num_frames: int) -> None:
    got, want = align_tiny.compare(load_audio(DATA / name), num_frames)
    assert_alignment_close(got, want)


@pytest.mark.slow
def test_align_from_scores_equals_ctranslate2_base(base: aw.WhisperModel) -> None:
    got, want = AlignmentPeer(base).compare(load_audio(DATA / "long_40s.wav"), 3000)
    assert_alignment_close(got, want)
