"""Test-only :class:`~aiowhisper_npu.transcription.protocol.WindowRecognizer` over CTranslate2: each protocol
method is the CTranslate2 call faster-whisper makes, so running our seek loop over it and comparing with
faster-whisper on the same ``ctranslate2.models.Whisper`` checks the loop alone."""

from __future__ import annotations

from typing import Any, Sequence

import anyio
import numpy as np

from aiowhisper_npu.decoder.options import AlignmentResult, GenerationOptions, GenerationResult
from aiowhisper_npu.decoder.tokenizer import Tokenizer
from aiowhisper_npu.models.model import ModelDimensions


class CT2Window:
    """An encoded window: CTranslate2's encoder output."""

    def __init__(self, owner: CT2Recognizer, output: Any):
        self.owner = owner
        self.output: Any = output

    def close(self) -> None:
        if self.output is not None:
            self.output = None
            self.owner.open_windows -= 1

    def get(self) -> Any:
        if self.output is None:
            raise RuntimeError("the window is closed")
        return self.output


class CT2Recognizer:
    """A WindowRecognizer running CTranslate2 (``ct2`` is a ``ctranslate2.models.Whisper``, e.g. faster-whisper's
    ``WhisperModel.model``, so that both share one model). Calls run in a worker thread. ``open_windows``
    counts windows encoded and not yet closed; ``calls`` records ``(method, argument)`` pairs."""

    def __init__(self, ct2: Any, dims: ModelDimensions, model_dir: Any):
        self.ct2 = ct2
        self._dims = dims
        self._tokenizer = Tokenizer.for_model(model_dir, dims.n_vocab)
        self.open_windows = 0
        self.calls: list[tuple[str, Any]] = []

    @property
    def dims(self) -> ModelDimensions:
        return self._dims

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    async def encode(self, mel: np.ndarray, n_ctx: int | None = None) -> CT2Window:
        import ctranslate2

        assert n_ctx is None or n_ctx == self._dims.n_audio_ctx, "CTranslate2 encodes the full context only"
        assert mel.shape == (self._dims.n_mels, 3000) and mel.dtype == np.float32
        self.calls.append(("encode", None))
        sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None]))
        out = await anyio.to_thread.run_sync(lambda: self.ct2.encode(sv, to_cpu=False))
        self.open_windows += 1
        return CT2Window(self, out)

    async def generate(self, window: CT2Window, prompt: Sequence[int], options: GenerationOptions,
                       draft: Sequence[int] = ()) -> GenerationResult:  # a draft changes nothing: it is not used
        self.calls.append(("generate", (list(prompt), options)))
        features = window.get()

        def run() -> Any:
            return self.ct2.generate(
                features, [list(prompt)], beam_size=options.beam_size, patience=options.patience,
                num_hypotheses=options.num_hypotheses, length_penalty=options.length_penalty,
                repetition_penalty=options.repetition_penalty, no_repeat_ngram_size=options.no_repeat_ngram_size,
                max_length=options.max_length, return_scores=True,
                return_no_speech_prob=options.return_no_speech_prob, suppress_blank=options.suppress_blank,
                suppress_tokens=list(options.suppress_tokens),
                max_initial_timestamp_index=options.max_initial_timestamp_index,
                sampling_topk=options.sampling_topk, sampling_temperature=options.sampling_temperature)[0]

        r = await anyio.to_thread.run_sync(run)
        return GenerationResult([list(s) for s in r.sequences_ids], list(r.scores), float(r.no_speech_prob))

    async def detect_language(self, window: CT2Window) -> list[tuple[str, float]]:
        self.calls.append(("detect_language", None))
        features = window.get()
        res = await anyio.to_thread.run_sync(lambda: self.ct2.detect_language(features))
        return [(token[2:-2], float(p)) for token, p in res[0]]

    async def align(self, window: CT2Window, start_sequence: Sequence[int], text_tokens: Sequence[Sequence[int]],
                    num_frames: int, median_filter_width: int = 7) -> list[AlignmentResult]:
        self.calls.append(("align", (list(start_sequence), [list(t) for t in text_tokens], num_frames)))
        features = window.get()
        res = await anyio.to_thread.run_sync(lambda: self.ct2.align(
            features, list(start_sequence), [list(t) for t in text_tokens], num_frames,
            median_filter_width=median_filter_width))
        return [AlignmentResult([(int(a), int(b)) for a, b in r.alignments], [float(p) for p in r.text_token_probs])
                for r in res]
