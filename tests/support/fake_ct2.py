"""A scripted stand-in for ``ctranslate2.models.Whisper`` (test-only): the methods faster-whisper calls
(``encode``, ``generate``, ``detect_language``, ``align``), answering with random but well-formed results drawn
from a seeded generator **in call order**, and logging every call.

faster-whisper (built around it) and our seek loop (over
:class:`tests.support.ct2_backend.CT2Recognizer` around it) then see the same answers as long as they make
the same calls, so their outputs must be equal bit for bit and their call logs equal; the answers are chosen
to reach every branch of the seek loop (timestamp patterns, fallback, silence, anomalous words, truncated
paths, unfinished segments...) without running a model.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, ClassVar, Sequence

import numpy as np

from aiowhisper_npu.decoder.tokenizer import Tokenizer
from aiowhisper_npu.models.model import ModelDimensions

#: CTranslate2's defaults for ``Whisper.generate``, to compare calls that spell options differently.
GENERATE_DEFAULTS: dict[str, Any] = dict(
    beam_size=5, patience=1, num_hypotheses=1, length_penalty=1, repetition_penalty=1, no_repeat_ngram_size=0,
    max_length=448, return_scores=False, return_no_speech_prob=False, max_initial_timestamp_index=50,
    suppress_blank=True, suppress_tokens=[-1], sampling_topk=1, sampling_temperature=1)

#: the vocabulary size of each installed model the scripted model stands in for
VOCAB = {"tiny.en": 51864, "base": 51865}


def scripted_dims(n_vocab: int) -> ModelDimensions:
    """Model dimensions for a scripted model with ``n_vocab`` tokens (tiny's layer sizes; nothing runs them)."""
    return ModelDimensions(80, 1500, 384, 6, 4, n_vocab, 448, 384, 6, 4)


_TEXT = ("Every morning I walk to the station, and buy a newspaper. Is it (really) \"late\"? Yes! "
         "We need bread, milk and eggs... The quick brown fox jumps over the lazy dog.")
_LANGUAGES = ("en", "de", "es", "fr", "zh", "ja")


class ScriptedWhisper:
    """See the module docstring. ``multilingual`` must match the tokenizer's vocabulary."""

    device = "cpu"
    device_index: ClassVar[list[int]] = [0]

    def __init__(self, tokenizer: Tokenizer, seed: int):
        self.tok = tokenizer
        self.rng = np.random.default_rng(seed)
        self.log: list[tuple[str, Any]] = []
        self.pool = tokenizer.encode(" " + _TEXT) + tokenizer.encode(" (") + tokenizer.encode(" \"")

    @property
    def is_multilingual(self) -> bool:
        return self.tok.multilingual

    # -- the CTranslate2 API ------------------------------------------------------------------------------
    def encode(self, features: Any, to_cpu: bool = False) -> Any:
        mel = np.array(features)[0]
        self.log.append(("encode", mel))
        content = np.flatnonzero(np.any(mel != 0, axis=0))
        return SimpleNamespace(frames=int(content[-1]) + 1 if content.size else 0)

    def generate(self, features: Any, prompts: Sequence[Sequence[int]], **kwargs: Any) -> list[Any]:
        options = {**GENERATE_DEFAULTS, **kwargs}
        options["suppress_tokens"] = sorted(options["suppress_tokens"] or [])
        prompt = [int(t) for t in prompts[0]]
        self.log.append(("generate", (prompt, options)))
        timestamps = prompt[-1] != self.tok.no_timestamps and self.tok.no_timestamps not in prompt
        limit = min(options["max_length"] // 2, options["max_length"] - len(prompt))
        seqs = [self._sequence(features.frames // 2, timestamps)[:limit] for _ in range(options["num_hypotheses"])]
        r = self.rng.random()
        scores = [float(-3 * r**3 - self.rng.random() * 0.3) for _ in seqs]
        no_speech = float(self.rng.random() ** 2)
        return [SimpleNamespace(sequences_ids=seqs, scores=scores, no_speech_prob=no_speech)]

    def detect_language(self, features: Any) -> list[list[tuple[str, float]]]:
        self.log.append(("detect_language", None))
        codes = [c for c in _LANGUAGES if c in self.tok.language_codes]
        logits = self.rng.normal(size=len(codes)) * self.rng.choice([0.3, 3.0])
        probs = np.exp(logits) / np.exp(logits).sum()
        order = np.argsort(-probs, kind="stable")
        return [[(f"<|{codes[i]}|>", float(probs[i])) for i in order]]

    def align(self, features: Any, start_sequence: Sequence[int], text_tokens: Sequence[Sequence[int]],
              num_frames: int, median_filter_width: int = 7) -> list[Any]:
        self.log.append(("align", ([int(t) for t in start_sequence], [list(map(int, t)) for t in text_tokens],
                                   int(num_frames), median_filter_width)))
        out = []
        for text in text_tokens:
            scale = 0.2 if self.rng.random() < 0.3 else 1.0  # sometimes improbable words (hallucination-like)
            probs = [float(p) for p in scale * self.rng.random(len(text)) ** 0.5]
            out.append(SimpleNamespace(alignments=self._path(len(text) + 1, int(num_frames) // 2),
                                       text_token_probs=probs))
        return out

    # -- scripted answers ---------------------------------------------------------------------------------
    def _text(self) -> list[int]:
        n = int(self.rng.integers(1, 14 if self.rng.random() < 0.8 else 40))
        if self.rng.random() < 0.15:  # repetitive: fails the compression test
            return [int(self.rng.choice(self.pool))] * (n * 6)
        start = int(self.rng.integers(0, len(self.pool) - n))
        return [int(t) for t in self.pool[start : start + n]]

    def _sequence(self, positions: int, timestamps: bool) -> list[int]:
        """Text, or timestamped segments ending in any of Whisper's patterns."""
        if self.rng.random() < 0.05:
            return []
        if not timestamps:
            return self._text()
        begin = self.tok.timestamp_begin
        top = max(positions, 2) + (5 if self.rng.random() < 0.1 else 0)  # sometimes past the window
        t = int(self.rng.integers(0, min(60, top) if self.rng.random() < 0.6 else top))
        seq: list[int] = []
        for _ in range(int(self.rng.integers(1, 5))):
            end = min(t + int(self.rng.integers(0, 300)), top)
            seq += [begin + t, *self._text(), begin + end]
            t = end if self.rng.random() < 0.7 else min(end + int(self.rng.integers(0, 80)), top)
        ending = self.rng.random()
        if ending < 0.3:  # an unfinished last segment
            seq += [begin + t, *self._text()]
        elif ending < 0.4:  # a pair of timestamps at the very end
            seq += [begin + t]
        # otherwise a single timestamp at the end (with one segment: no pair at all)
        return seq

    def _path(self, rows: int, cols: int) -> list[tuple[int, int]]:
        """A DTW path as CTranslate2's backtrace leaves it: every row, each from the frame its token starts at
        (random, sorted, within a random stretch of "speech") to the next one's, ending in the last cell."""
        if rows == 0 or cols == 0:
            return []
        a = int(self.rng.integers(0, max(cols // 2, 1)))
        b = int(self.rng.integers(a + 1, cols + 1))
        starts = np.sort(self.rng.integers(a, b, size=rows))
        if self.rng.random() < 0.3:  # a pause inside: later tokens pushed towards the end
            k = int(self.rng.integers(0, rows))
            starts[k:] = np.minimum(starts[k:] + int(self.rng.integers(0, cols)), cols - 1)
        path = []
        for r in range(rows):
            stop = int(starts[r + 1]) if r + 1 < rows else cols
            path += [(r, c) for c in range(int(starts[r]), max(stop, int(starts[r]) + 1))]
        return path
