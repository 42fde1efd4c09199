"""Each step of the seek loop against the faster-whisper function it mirrors, on many random inputs:
timestamp splitting, prompts, temperature fallback, language detection, word alignment post-processing,
word timestamps, punctuation merging. Equal bit for bit (the inputs are the same numbers)."""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace
from typing import Any

import anyio
import numpy as np
import pytest

from aiowhisper_npu.decoder.options import AlignmentResult
from aiowhisper_npu.decoder.tokenizer import Tokenizer
from aiowhisper_npu.models.registry import resolve_model_dir
from aiowhisper_npu.transcription.detection import detect_language
from aiowhisper_npu.transcription.fallback import build_prompt, generate_with_fallback, suppress_token_ids
from aiowhisper_npu.transcription.options import TranscriptionOptions
from aiowhisper_npu.transcription.segmentation import SegmentDraft, split_by_timestamps
from aiowhisper_npu.transcription.timing import (
    AlignedWord,
    add_word_timestamps,
    merge_punctuations,
    words_from_alignment,
)
from tests.support.ct2_backend import CT2Recognizer
from tests.support.fake_ct2 import VOCAB, ScriptedWhisper, scripted_dims

CJK = "我们明天去市场买水果和蔬菜。今日はとても良い天気ですね、散歩しましょう！"


@pytest.fixture(scope="module", params=["tiny.en", "base"])
def toks(request: pytest.FixtureRequest) -> tuple[Tokenizer, Any, str]:
    """Our tokenizer and faster-whisper's, for one model."""
    from faster_whisper.tokenizer import Tokenizer as FWTokenizer

    name = request.param
    ours = Tokenizer.for_model(resolve_model_dir(name), VOCAB[name], language="en")
    return ours, FWTokenizer(ours.hf, ours.multilingual, task="transcribe", language="en"), name


def seed_blocks(n: int, size: int = 25) -> list[range]:
    """Seeds ``0..n-1`` in blocks (one test per block keeps the collection small)."""
    return [range(b, min(b + size, n)) for b in range(0, n, size)]


def each_seed(seeds: range, check: Any, *args: Any) -> None:
    """``check(*args, seed)`` for every seed; a failure names its seed."""
    for seed in seeds:
        try:
            check(*args, seed)
        except AssertionError as exc:
            raise AssertionError(f"seed {seed}: {exc}") from exc


def fw_model(**attrs: Any) -> Any:
    """A bare faster-whisper WhisperModel carrying only what the tested method reads."""
    from faster_whisper import WhisperModel
    from faster_whisper.feature_extractor import FeatureExtractor
    from faster_whisper.utils import get_logger

    model = object.__new__(WhisperModel)
    model.__dict__.update(time_precision=0.02, input_stride=2, frames_per_second=100, tokens_per_second=50,
                          max_length=448, logger=get_logger(), **attrs)
    if "feature_extractor" not in attrs:
        model.feature_extractor = FeatureExtractor() if "model" in attrs else None
    return model


@pytest.mark.parametrize("seeds", seed_blocks(300), ids=lambda r: f"{r.start}-{r.stop - 1}")
def test_split_by_timestamps(toks: tuple[Tokenizer, Any, str], seeds: range) -> None:
    each_seed(seeds, _split_by_timestamps, toks)


def _split_by_timestamps(toks: tuple[Tokenizer, Any, str], seed: int) -> None:
    ours, theirs, _ = toks
    rng = np.random.default_rng(seed)
    fake = ScriptedWhisper(ours, seed)
    size = int(rng.integers(1, 3001))
    tokens = fake._sequence(size // 2, timestamps=rng.random() < 0.9)
    seek = int(rng.integers(0, 5000))
    args = (seek * 0.01, size, size * 0.01, seek)
    want_segments, want_seek, want_single = fw_model()._split_segments_by_timestamps(theirs, tokens, *args)
    got = split_by_timestamps(ours, tokens, *args)
    assert [dataclasses.asdict(s) for s in got.segments] == [dict(s, words=[]) for s in want_segments]
    assert (got.seek, got.single_timestamp_ending) == (want_seek, want_single)


@pytest.mark.parametrize("pattern", ["", "0", "0 a", "a 0", "0 a 0", "0 a 5", "a", "0 0", "0 a 5 5", "0 a 5 5 b",
                                     "0 a 5 5 b 9", "a 5 5 b", "3 a 0", "0 a 0 0 b 0", "0 0 a 3 3"])
def test_split_by_timestamps_patterns(toks: tuple[Tokenizer, Any, str], pattern: str) -> None:
    """Hand-picked patterns (digits: timestamp steps; letters: text), <|0.00|> endings among them."""
    ours, theirs, _ = toks
    text = {c: t for c, t in zip("ab", ours.encode(" hello world"))}
    tokens = [ours.timestamp_begin + int(p) if p.isdigit() else text[p] for p in pattern.split()]
    for seek, size in ((0, 3000), (1234, 700)):
        args = (seek * 0.01, size, size * 0.01, seek)
        want_segments, want_seek, want_single = fw_model()._split_segments_by_timestamps(theirs, tokens, *args)
        got = split_by_timestamps(ours, tokens, *args)
        assert [dataclasses.asdict(s) for s in got.segments] == [dict(s, words=[]) for s in want_segments]
        assert (got.seek, got.single_timestamp_ending) == (want_seek, want_single)


@pytest.mark.parametrize("seeds", seed_blocks(200), ids=lambda r: f"{r.start}-{r.stop - 1}")
def test_prompt(toks: tuple[Tokenizer, Any, str], seeds: range) -> None:
    each_seed(seeds, _prompt, toks)


def _prompt(toks: tuple[Tokenizer, Any, str], seed: int) -> None:
    ours, theirs, _ = toks
    rng = np.random.default_rng(seed)
    previous = [int(t) for t in rng.integers(0, 50000, size=int(rng.choice([0, 5, 300])))]
    long_text = " ".join(["word"] * 300)
    prefix = [None, "", "And so", long_text][int(rng.integers(4))]
    hotwords = [None, "", "fellow Americans", long_text][int(rng.integers(4))]
    without = bool(rng.random() < 0.5)
    want = fw_model().get_prompt(theirs, previous, without_timestamps=without, prefix=prefix, hotwords=hotwords)
    assert build_prompt(ours, previous, without_timestamps=without, prefix=prefix, hotwords=hotwords) == want


def test_suppress_tokens(toks: tuple[Tokenizer, Any, str]) -> None:
    from faster_whisper.transcribe import get_suppressed_tokens

    ours, theirs, _ = toks
    for given in ([-1], [-1, 11, 13], [11, 13], [], None):
        want = get_suppressed_tokens(theirs, list(given)) if given else given
        assert suppress_token_ids(ours, given) == tuple(want or ())


@pytest.mark.parametrize("seeds", seed_blocks(60), ids=lambda r: f"{r.start}-{r.stop - 1}")
def test_generate_with_fallback(toks: tuple[Tokenizer, Any, str], seeds: range) -> None:
    each_seed(seeds, _generate_with_fallback, toks)


def _generate_with_fallback(toks: tuple[Tokenizer, Any, str], seed: int) -> None:
    from faster_whisper.transcribe import TranscriptionOptions as FWOptions, get_suppressed_tokens

    ours, theirs, name = toks
    rng = np.random.default_rng(seed)
    pick = lambda *xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    kw = dict(beam_size=int(rng.integers(1, 6)), best_of=int(rng.integers(1, 6)), patience=pick(1, 1.5),
              length_penalty=pick(1, 0.5), repetition_penalty=pick(1, 1.1), no_repeat_ngram_size=pick(0, 3),
              log_prob_threshold=pick(-1.0, None, -0.3), no_speech_threshold=pick(0.6, None, 0.2),
              compression_ratio_threshold=pick(2.4, None, 1.2), suppress_blank=pick(True, False),
              max_initial_timestamp=pick(1.0, 0.3), max_new_tokens=pick(None, 30),
              temperature=pick([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], [0.3], [0.0, 1.0]))
    options = TranscriptionOptions(**kw)
    suppress = suppress_token_ids(ours, options.suppress_tokens)
    fw_options = FWOptions(**{f.name: getattr(options, f.name) for f in dataclasses.fields(FWOptions)
                              if f.name not in ("temperatures", "suppress_tokens")},
                           temperatures=list(options.temperatures),
                           suppress_tokens=get_suppressed_tokens(theirs, [-1]))
    prompt = list(ours.sot_sequence) + ([ours.no_timestamps] if rng.random() < 0.3 else [])
    fake_theirs, fake_ours = ScriptedWhisper(ours, seed), ScriptedWhisper(ours, seed)
    window = SimpleNamespace(frames=int(rng.integers(1, 3001)))
    result, logprob, temperature, ratio = fw_model(model=fake_theirs).generate_with_fallback(
        window, prompt, theirs, fw_options)
    decoder = CT2Recognizer(fake_ours, scripted_dims(VOCAB[name]), resolve_model_dir(name))
    got = anyio.run(generate_with_fallback, decoder, _OpenWindow(window), prompt, ours, options, suppress)
    assert (got.avg_logprob, got.temperature, got.compression_ratio) == (logprob, temperature, ratio)
    assert got.tokens == result.sequences_ids[0] and got.no_speech_prob == result.no_speech_prob
    assert fake_ours.log == fake_theirs.log


class _OpenWindow:
    def __init__(self, output: Any):
        self.output = output

    def get(self) -> Any:
        return self.output


@pytest.mark.parametrize("seeds", seed_blocks(40), ids=lambda r: f"{r.start}-{r.stop - 1}")
def test_detect_language(seeds: range) -> None:
    each_seed(seeds, _detect_language)


def _detect_language(seed: int) -> None:
    rng = np.random.default_rng(seed)
    tok = Tokenizer.for_model(resolve_model_dir("base"), VOCAB["base"])
    frames = int(rng.integers(1, 4 * 3000))
    features = rng.normal(size=(80, frames)).astype(np.float32)
    segments, threshold = int(rng.integers(1, 5)), float(rng.choice([0.2, 0.5, 0.95]))
    fake_theirs, fake_ours = ScriptedWhisper(tok, seed), ScriptedWhisper(tok, seed)
    want = fw_model(model=fake_theirs).detect_language(
        features=features, language_detection_segments=segments, language_detection_threshold=threshold)
    decoder = CT2Recognizer(fake_ours, scripted_dims(VOCAB["base"]), resolve_model_dir("base"))
    got = anyio.run(lambda: detect_language(decoder, features, segments=segments, threshold=threshold))
    assert (got.language, got.probability, got.all_language_probs) == want
    assert decoder.open_windows == 0
    assert len(fake_ours.log) == len(fake_theirs.log)


@pytest.mark.parametrize("script, threshold, want", [
    ([("de", 0.3), ("es", 0.4), ("es", 0.35)], 0.5, ("es", 0.4)),  # the majority, at its best probability
    ([("de", 0.3), ("es", 0.4), ("fr", 0.35)], 0.5, ("de", 0.3)),  # a tie: the first
    ([("de", 0.3), ("es", 0.6), ("es", 0.9)], 0.5, ("es", 0.6)),  # the first above the threshold
])
def test_detect_language_votes(script: list[tuple[str, float]], threshold: float, want: tuple[str, float]) -> None:
    """Scripted windows: the same answers to faster-whisper and to ours."""
    tok = Tokenizer.for_model(resolve_model_dir("base"), VOCAB["base"])

    class Scripted(ScriptedWhisper):
        def detect_language(self, features: Any) -> list[list[tuple[str, float]]]:
            code, p = script[sum(1 for c in self.log if c[0] == "detect_language")]
            self.log.append(("detect_language", None))
            return [[(f"<|{code}|>", p), ("<|en|>", 1 - p)]]

    features = np.ones((80, 9000), np.float32)
    theirs = fw_model(model=Scripted(tok, 0)).detect_language(
        features=features, language_detection_segments=3, language_detection_threshold=threshold)
    decoder = CT2Recognizer(Scripted(tok, 0), scripted_dims(VOCAB["base"]), resolve_model_dir("base"))
    got = anyio.run(lambda: detect_language(decoder, features, segments=3, threshold=threshold))
    assert (got.language, got.probability) == theirs[:2] == want
    assert got.all_language_probs == theirs[2]


def _random_text(ours: Tokenizer, rng: np.random.Generator, language: str) -> list[int]:
    fake = ScriptedWhisper(ours, int(rng.integers(1 << 30)))
    if language in ("zh", "ja"):
        ids = ours.encode(CJK)
        start = int(rng.integers(0, len(ids) - 1))
        return ids[start : start + int(rng.integers(1, 25))]
    return [t for _ in range(int(rng.integers(1, 4))) for t in fake._text()]


def _aligned(ours: Tokenizer, theirs: Any, rng: np.random.Generator, seed: int,
             language: str) -> tuple[list[int], int, AlignmentResult, list[dict[str, Any]]]:
    """Random text and alignment; faster-whisper's find_alignment of them."""
    text = _random_text(ours, rng, language)
    num_frames = int(rng.integers(2, 3001))
    path = ScriptedWhisper(ours, seed)._path(len(text) + 1, num_frames // 2)
    probs = [float(p) for p in rng.random(len(text))]
    fake = SimpleNamespace(align=lambda *a, **k: [SimpleNamespace(alignments=path, text_token_probs=probs)])
    want = fw_model(model=fake).find_alignment(theirs, [text], None, num_frames)[0]
    return text, num_frames, AlignmentResult(path, probs), want


@pytest.mark.parametrize("seeds", seed_blocks(150), ids=lambda r: f"{r.start}-{r.stop - 1}")
def test_words_from_alignment(toks: tuple[Tokenizer, Any, str], seeds: range) -> None:
    each_seed(seeds, _words_from_alignment, toks)


def _words_from_alignment(toks: tuple[Tokenizer, Any, str], seed: int) -> None:
    ours, theirs, name = toks
    rng = np.random.default_rng(seed)
    language = str(rng.choice(["en", "zh", "ja", "de"])) if name == "base" else "en"
    ours = ours.with_language(language)
    theirs = copy.copy(theirs)
    theirs.language_code = language
    text, _, alignment, want = _aligned(ours, theirs, rng, seed, language)
    got = words_from_alignment(ours, text, alignment)
    assert [dataclasses.asdict(w) for w in got] == want


@pytest.mark.parametrize("seeds", seed_blocks(300), ids=lambda r: f"{r.start}-{r.stop - 1}")
def test_add_word_timestamps(toks: tuple[Tokenizer, Any, str], seeds: range) -> None:
    each_seed(seeds, _add_word_timestamps, toks)


def _add_word_timestamps(toks: tuple[Tokenizer, Any, str], seed: int) -> None:
    ours, theirs, _ = toks
    rng = np.random.default_rng(seed)
    text, num_frames, _, aligned = _aligned(ours, theirs, rng, seed, "en")
    # the text's tokens dealt out to 1-4 segments, with timestamps around them
    cuts = sorted(rng.choice(np.arange(1, len(text) + 1), size=min(len(text), int(rng.integers(1, 5))),
                         replace=False).tolist())
    seek = int(rng.integers(0, 4000))
    segments, last = [], 0
    for cut in cuts[:-1] + [len(text)]:
        start = seek / 100 + float(rng.integers(0, num_frames // 2)) * 0.02
        end = start + float(rng.integers(0, 300)) * 0.02
        stamps = [ours.timestamp_begin + int(rng.integers(0, 1500)) for _ in range(2)]
        segments.append(dict(seek=seek, start=start, end=end, tokens=[stamps[0], *text[last:cut], stamps[1]]))
        last = cut
    prepend, append = "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、"
    last_speech = float(rng.choice([0.0, seek / 100 + rng.random() * 10]))
    drafts = [SegmentDraft(s["seek"], s["start"], s["end"], list(s["tokens"])) for s in segments]
    words = [AlignedWord(**w) for w in copy.deepcopy(aligned)]
    fake = fw_model(find_alignment=lambda *a, **k: [copy.deepcopy(aligned)])
    want_last = fake.add_word_timestamps([segments], theirs, None, num_frames, prepend, append, last_speech)
    got_last = add_word_timestamps(drafts, ours, words, prepend, append, last_speech)
    assert got_last == want_last
    for d, s in zip(drafts, segments):
        assert (d.start, d.end) == (s["start"], s["end"])
        assert [dataclasses.asdict(w) for w in d.words] == [
            {k: w[k] for k in ("word", "start", "end", "probability")} for w in s["words"]]


@pytest.mark.parametrize("seeds", seed_blocks(100), ids=lambda r: f"{r.start}-{r.stop - 1}")
def test_merge_punctuations(seeds: range) -> None:
    each_seed(seeds, _merge_punctuations)


def _merge_punctuations(seed: int) -> None:
    from faster_whisper.transcribe import merge_punctuations as fw_merge

    rng = np.random.default_rng(seed)
    vocab = ["", " ", "a", " b", " (", "(", ".", ",", " \"", "\"", "!", " c", "d ", "'", " '"]
    words = [dict(word=str(rng.choice(vocab)),
                  tokens=[int(t) for t in rng.integers(0, 99, size=int(rng.integers(0, 3)))],
                  start=0.0, end=0.0, probability=0.5) for _ in range(int(rng.integers(0, 9)))]
    ours = [AlignedWord(**w) for w in copy.deepcopy(words)]
    fw_merge(words, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
    merge_punctuations(ours, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
    assert [dataclasses.asdict(w) for w in ours] == words
