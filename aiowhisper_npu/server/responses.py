"""OpenAI's transcription response shapes from a :class:`~aiowhisper_npu.TranscriptionResult`.

``json``: ``{"text"}``; ``text``: the text and a newline; ``srt`` and ``vtt``: subtitles
(:mod:`aiowhisper_npu.formats`); ``verbose_json``: ``{"task", "language", "duration", "text", "segments"}``
and ``"words"`` when word timestamps were asked for. As in OpenAI's API, segment ids count from 0 and the
language is its English name (``"english"``).
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ..decoder.languages import LANGUAGES
from ..formats import to_srt, to_vtt
from ..transcription.results import Segment, TranscriptionResult

__all__ = ["RESPONSE_FORMATS", "render_response", "verbose_json"]

RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


def _segment(s: Segment) -> dict[str, Any]:
    return {"id": s.id - 1, "seek": s.seek, "start": s.start, "end": s.end, "text": s.text,
            "tokens": list(s.tokens), "temperature": s.temperature if s.temperature is not None else 0.0,
            "avg_logprob": s.avg_logprob, "compression_ratio": s.compression_ratio,
            "no_speech_prob": s.no_speech_prob}


def verbose_json(result: TranscriptionResult, *, task: str, words: bool) -> dict[str, Any]:
    """The ``verbose_json`` document; ``words`` adds the word list (the result must hold word timings)."""
    doc: dict[str, Any] = {"task": task, "language": LANGUAGES.get(result.language, result.language),
                           "duration": result.duration, "text": result.text,
                           "segments": [_segment(s) for s in result.segments]}
    if words:
        doc["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end, "probability": w.probability}
                        for s in result.segments for w in (s.words or ())]
    return doc


def render_response(result: TranscriptionResult, fmt: str, *, task: str, words: bool = False) -> Response:
    """``result`` in response format ``fmt`` (one of :data:`RESPONSE_FORMATS`)."""
    if fmt == "json":
        return JSONResponse({"text": result.text})
    if fmt == "text":
        return PlainTextResponse(result.text + "\n")
    if fmt == "srt":
        return PlainTextResponse(to_srt(result.segments))
    if fmt == "vtt":
        return PlainTextResponse(to_vtt(result.segments), media_type="text/vtt")
    if fmt == "verbose_json":
        return JSONResponse(verbose_json(result, task=task, words=words))
    raise ValueError(f"unknown response format {fmt!r}")
