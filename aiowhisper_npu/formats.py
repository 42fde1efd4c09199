"""Transcripts as plain text, SubRip (SRT), WebVTT and JSON.

Works on any segments with ``start``, ``end`` and ``text`` (seconds and the segment's text, with Whisper's
leading space) and, for JSON, the other fields of :class:`~aiowhisper_npu.transcription.results.Segment` when
present. Used by the ``transcribe`` command and the server's ``response_format``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from typing import Any, Protocol

__all__ = ["FORMATS", "format_timestamp", "to_text", "to_srt", "to_vtt", "segment_dict", "to_json", "render"]

FORMATS = ("txt", "srt", "vtt", "json")


class _Segment(Protocol):
    @property
    def start(self) -> float: ...

    @property
    def end(self) -> float: ...

    @property
    def text(self) -> str: ...


def format_timestamp(seconds: float, *, always_hours: bool = True, decimal: str = ".") -> str:
    """``HH:MM:SS.mmm`` (SRT uses ``,`` as the decimal marker; WebVTT may drop the hours)."""
    if seconds < 0:
        raise ValueError(f"a timestamp cannot be negative, got {seconds}")
    ms = round(seconds * 1000.0)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def to_text(segments: Iterable[_Segment]) -> str:
    """The transcript as one line per segment."""
    return "".join(f"{s.text.strip()}\n" for s in segments)


def to_srt(segments: Iterable[_Segment]) -> str:
    blocks = []
    for i, s in enumerate(segments, start=1):
        blocks.append(f"{i}\n{format_timestamp(s.start, decimal=',')} --> {format_timestamp(s.end, decimal=',')}\n"
                      f"{s.text.strip().replace('-->', '->')}\n")
    return "\n".join(blocks)


def to_vtt(segments: Iterable[_Segment]) -> str:
    cues = [f"{format_timestamp(s.start)} --> {format_timestamp(s.end)}\n{s.text.strip().replace('-->', '->')}\n"
            for s in segments]
    return "WEBVTT\n\n" + "\n".join(cues)


def segment_dict(segment: Any) -> dict[str, Any]:
    """A segment (a dataclass or any object with the usual fields) as a JSON-ready dict."""
    if dataclasses.is_dataclass(segment) and not isinstance(segment, type):
        return dataclasses.asdict(segment)
    return {k: getattr(segment, k) for k in ("id", "start", "end", "text") if hasattr(segment, k)}


def to_json(segments: Iterable[Any], **info: Any) -> str:
    segs = [segment_dict(s) for s in segments]
    return json.dumps({**info, "text": "".join(s["text"] for s in segs).strip(), "segments": segs},
                      ensure_ascii=False, indent=2) + "\n"


def render(fmt: str, segments: Iterable[Any], **info: Any) -> str:
    """The transcript in ``fmt`` (one of :data:`FORMATS`); ``info`` goes into the JSON document."""
    segs = list(segments)
    if fmt == "txt":
        return to_text(segs)
    if fmt == "srt":
        return to_srt(segs)
    if fmt == "vtt":
        return to_vtt(segs)
    if fmt == "json":
        return to_json(segs, **info)
    raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(FORMATS)}")
