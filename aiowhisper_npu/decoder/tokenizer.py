"""Whisper's tokenizer: byte-level BPE from the model's ``tokenizer.json`` (HF ``tokenizers``), and its
special tokens, resolved by name.

Special tokens: ``<|endoftext|>`` (end of transcript), ``<|startoftranscript|>``, one ``<|xx|>`` per language,
``<|translate|>``, ``<|transcribe|>``, ``<|startoflm|>``, ``<|startofprev|>`` (a previous-text prompt follows),
``<|nospeech|>`` (``<|nocaptions|>`` in older vocabularies) and ``<|notimestamps|>``. The 1501 timestamp
tokens ``<|0.00|>`` .. ``<|30.00|>`` follow ``<|notimestamps|>`` directly, up to the end of the vocabulary,
as in openai-whisper and faster-whisper (``tokenizer.json`` does not list them).

The multilingual vocabulary (51865 tokens and more) puts the language and task after
``<|startoftranscript|>``; the English-only one (51864) uses ``<|startoftranscript|>`` alone.
"""

from __future__ import annotations

import os
import string
import threading
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from ..errors import ModelError
from .languages import LANGUAGES, language_code

__all__ = ["Tokenizer", "load_hf_tokenizer", "TASKS"]

TASKS = ("transcribe", "translate")
#: Time per timestamp token, in seconds.
TIME_PRECISION = 0.02
_NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
_cache: dict[tuple[str, int, int], Any] = {}
_cache_lock = threading.Lock()


def load_hf_tokenizer(model_dir: str | os.PathLike[str]) -> Any:
    """The ``tokenizers.Tokenizer`` of ``model_dir/tokenizer.json`` (cached per file and modification time)."""
    path = Path(model_dir) / "tokenizer.json"
    try:
        st = path.stat()
    except OSError:
        raise ModelError(f"{path} is missing: transcription needs the model's tokenizer.json") from None
    key = (str(path), st.st_size, st.st_mtime_ns)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    try:
        from tokenizers import Tokenizer as HFTokenizer
    except ImportError:  # pragma: no cover - a declared dependency
        raise ModelError("transcription needs the 'tokenizers' package: pip install tokenizers") from None
    try:
        tok = HFTokenizer.from_file(str(path))
    except Exception as exc:  # the library raises a bare Exception for a malformed file
        raise ModelError(f"cannot read {path}: {exc}") from exc
    with _cache_lock:
        _cache[key] = tok
    return tok


@dataclass(frozen=True, eq=False)
class Tokenizer:
    """A Whisper tokenizer for one task and language (see the module docstring).

    Args:
        hf: a ``tokenizers.Tokenizer`` over the model's ``tokenizer.json``.
        n_vocab: the model's vocabulary size (the token embedding's rows), which fixes the timestamp range
            and whether the vocabulary is multilingual.
        task: ``"transcribe"`` or ``"translate"`` (multilingual models only).
        language: a language code or name, or ``None`` (not yet known: detect it first). English-only models
            always use ``"en"``.
    """

    hf: Any
    n_vocab: int
    task: str = "transcribe"
    language: str | None = None
    _ids: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if not self.multilingual:
            if self.task != "transcribe":
                raise ValueError("an English-only model can only transcribe (task='transcribe')")
            object.__setattr__(self, "language", "en")
        elif self.language is not None:
            code = language_code(self.language)
            if code not in self.language_codes:
                raise ValueError(f"this model has no language token for {self.language!r}")
            object.__setattr__(self, "language", code)

    @classmethod
    def for_model(cls, model_dir: str | os.PathLike[str], n_vocab: int, **kwargs: Any) -> Tokenizer:
        """The tokenizer of a model directory (``tokenizer.json``)."""
        return cls(load_hf_tokenizer(model_dir), n_vocab, **kwargs)

    def with_language(self, language: str | None) -> Tokenizer:
        """The same tokenizer for another language (after language detection)."""
        return replace(self, language=language)

    def with_task(self, task: str) -> Tokenizer:
        return replace(self, task=task)

    # -- special tokens ---------------------------------------------------------------------------------
    def special(self, name: str) -> int:
        """The id of a special token such as ``"<|startoftranscript|>"``; :class:`ModelError` if absent."""
        hit = self._ids.get(name)
        if hit is None:
            hit = self.hf.token_to_id(name)
            if hit is None:
                raise ModelError(f"the tokenizer has no {name} token: not a Whisper tokenizer.json")
            self._ids[name] = hit
        return hit

    @property
    def multilingual(self) -> bool:
        return self.n_vocab >= 51865

    @cached_property
    def eot(self) -> int:
        return self.special("<|endoftext|>")

    @cached_property
    def sot(self) -> int:
        return self.special("<|startoftranscript|>")

    @cached_property
    def transcribe(self) -> int:
        return self.special("<|transcribe|>")

    @cached_property
    def translate(self) -> int:
        return self.special("<|translate|>")

    @cached_property
    def sot_lm(self) -> int:
        return self.special("<|startoflm|>")

    @cached_property
    def sot_prev(self) -> int:
        return self.special("<|startofprev|>")

    @cached_property
    def no_speech(self) -> int:
        found = self.hf.token_to_id("<|nospeech|>")
        return found if found is not None else self.special("<|nocaptions|>")

    @cached_property
    def no_timestamps(self) -> int:
        return self.special("<|notimestamps|>")

    @property
    def timestamp_begin(self) -> int:
        """``<|0.00|>``: the first timestamp token, right after ``<|notimestamps|>``."""
        return self.no_timestamps + 1

    @property
    def timestamp_end(self) -> int:
        """The last timestamp token (``<|30.00|>``): the end of the vocabulary."""
        return self.n_vocab - 1

    @cached_property
    def language_codes(self) -> tuple[str, ...]:
        """The languages this vocabulary has a token for, in token order."""
        return tuple(code for code in LANGUAGES if self.hf.token_to_id(f"<|{code}|>") is not None)

    @cached_property
    def language_tokens(self) -> tuple[int, ...]:
        return tuple(self.special(f"<|{code}|>") for code in self.language_codes)

    @property
    def language_token(self) -> int:
        if self.language is None:
            raise ValueError("the language is not set: detect it first, or pass language=")
        return self.special(f"<|{self.language}|>")

    @property
    def sot_sequence(self) -> tuple[int, ...]:
        """``<|startoftranscript|>`` (+ language and task tokens on multilingual models)."""
        if not self.multilingual:
            return (self.sot,)
        task = self.transcribe if self.task == "transcribe" else self.translate
        return (self.sot, self.language_token, task)

    # -- text -------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Text to token ids, without special tokens."""
        return list(self.hf.encode(text, add_special_tokens=False).ids)

    def decode(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens``; special and timestamp tokens are dropped."""
        return str(self.hf.decode([t for t in tokens if t < self.eot]))

    def decode_with_timestamps(self, tokens: Sequence[int]) -> str:
        """The text with timestamp tokens shown as ``<|1.08|>``; other special tokens are dropped."""
        parts: list[str] = []
        run: list[int] = []
        for t in tokens:
            if t >= self.timestamp_begin:
                parts.append(self.hf.decode(run))
                parts.append(f"<|{(t - self.timestamp_begin) * TIME_PRECISION:.2f}|>")
                run = []
            elif t < self.eot:
                run.append(t)
        parts.append(self.hf.decode(run))
        return "".join(parts)

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens of symbols that are not speech (speaker tags, music notes, brackets...), which
        ``suppress_tokens=[-1]`` suppresses; as defined by openai-whisper and faster-whisper. Symbols
        that the BPE splits are suppressed only where their first token is unambiguous (a music sign)."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        music = set("♩♪♫♬♭♮♯")
        found = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(music):
            for ids in (self.encode(symbol), self.encode(" " + symbol)):
                if len(ids) == 1 or symbol in music:
                    found.add(ids[0])
        return tuple(sorted(found))

    # -- words ------------------------------------------------------------------------------------------
    def split_to_word_tokens(self, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        """Split text tokens into words (for word timestamps): on spaces and punctuation, or, for languages
        written without spaces, at every whole unicode character."""
        if self.language in _NO_SPACE_LANGUAGES:
            return self._split_on_unicode(tokens)
        return self._split_on_spaces(tokens)

    def _split_on_unicode(self, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        """Group tokens so that each group decodes to whole characters (a token may hold part of one)."""
        full = self.decode_with_timestamps(tokens)
        bad = "\ufffd"
        words: list[str] = []
        groups: list[list[int]] = []
        current: list[int] = []
        offset = 0
        for t in tokens:
            current.append(t)
            text = self.decode_with_timestamps(current)
            at = offset + text.index(bad) if bad in text else -1
            if at < 0 or (at < len(full) and full[at] == bad):
                words.append(text)
                groups.append(current)
                current = []
                offset += len(text)
        return words, groups

    def _split_on_spaces(self, tokens: Sequence[int]) -> tuple[list[str], list[list[int]]]:
        words: list[str] = []
        groups: list[list[int]] = []
        for text, group in zip(*self._split_on_unicode(tokens)):
            starts_word = (group[0] >= self.eot or text.startswith(" ") or text.strip() in string.punctuation
                           or not words)
            if starts_word:
                words.append(text)
                groups.append(list(group))
            else:
                words[-1] += text
                groups[-1].extend(group)
        return words, groups
