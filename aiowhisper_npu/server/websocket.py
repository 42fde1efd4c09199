"""The live-caption WebSocket, ``/v1/stream``, on ``rt.captions``.

Protocol (the README's "Serve" section has it for clients):

- query: ``language`` (multilingual models; default: detect), ``sample_rate`` (default 16000), ``encoding``
  (``pcm_s16le``, the default, or ``f32le``), ``api_key`` (for browsers, which cannot set headers; the
  ``Authorization: Bearer`` header works too);
- client → server: binary frames of mono audio, then the text frame ``{"type": "end"}``;
- server → client: ``{"type": "update", "committed", "new", "tentative", "audio_s", "latency_s"}`` as the
  captions change, ``{"type": "final", "text", "segments": [{"start", "end", "text"}], "audio_s"}`` at the
  end, then a close with 1000;
- errors: ``{"type": "error", "message"}`` then a close: 1007 for a malformed frame (odd byte count for
  s16, a length that is not a multiple of 4 or a non-finite sample for f32, a text frame that is not
  ``{"type": "end"}``), 1008 for a missing or wrong key, bad query parameters or a client silent for
  ``stream_idle_timeout_s``, 1013 when ``max_streams`` streams are open (try again later), 1011 for an
  internal error; 1009 (by the server) for a frame over ``stream_max_frame_bytes``.
- shutdown: the stream stops taking audio, sends its final message for what it heard and closes with 1001.

**Slow and stalled clients are bounded.** Audio: at most ``stream_queue_frames`` frames wait here and
``max_queued_s`` (5 s) in the caption stream; beyond that the server stops reading the socket (TCP
backpressure slows the sender) — nothing is dropped. Updates: never queued; while a send is blocked, newer
updates are merged into one pending update (``new`` concatenated, the rest the latest), and a client that
takes no message for ``stream_send_timeout_s`` is dropped (no error frame can reach it). A client that
sends nothing for ``stream_idle_timeout_s`` gets an error and 1008.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ..decoder.languages import language_code
from ..errors import AudioError
from ..runtime.runtime import Runtime
from .auth import check_key
from .config import ServerConfig
from .errors import APIError
from .state import ServerState, server_state

__all__ = ["router", "StreamParams", "FrameError", "decode_frame", "Outbox"]

log = logging.getLogger("aiowhisper_npu.server")
router = APIRouter()

ENCODINGS = ("pcm_s16le", "f32le")
CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_INVALID, CLOSE_POLICY, CLOSE_INTERNAL, CLOSE_TRY_LATER = (
    1000, 1001, 1007, 1008, 1011, 1013)


class FrameError(ValueError):
    """A malformed frame from the client (answered with an error and 1007)."""


@dataclass(frozen=True)
class StreamParams:
    """The query parameters of one stream."""

    language: str | None = None
    sample_rate: int = 16000
    encoding: str = "pcm_s16le"

    @classmethod
    def from_query(cls, query: Any) -> StreamParams:
        """Parse and check; :class:`APIError` (400) names the bad parameter."""
        language = query.get("language") or None
        if language is not None:
            try:
                language = language_code(language)
            except ValueError as exc:
                raise APIError(400, str(exc), param="language") from None
        raw_rate = query.get("sample_rate") or "16000"
        try:
            rate = int(raw_rate)
        except ValueError:
            raise APIError(400, f"sample_rate must be an integer, got {raw_rate!r}", param="sample_rate") from None
        if not 1000 <= rate <= 384000:
            raise APIError(400, f"sample_rate must be between 1000 and 384000 Hz, got {rate}", param="sample_rate")
        encoding = query.get("encoding") or "pcm_s16le"
        if encoding not in ENCODINGS:
            raise APIError(400, f"encoding must be one of {', '.join(ENCODINGS)}, got {encoding!r}",
                           param="encoding")
        return cls(language, rate, encoding)


def decode_frame(data: bytes, encoding: str) -> np.ndarray:
    """A binary frame as float32 samples; :class:`FrameError` when it is malformed."""
    if encoding == "pcm_s16le":
        if len(data) % 2:
            raise FrameError(f"a pcm_s16le frame must hold whole 2-byte samples, got {len(data)} bytes")
        return np.frombuffer(data, "<i2").astype(np.float32) * np.float32(1 / 32768)
    if len(data) % 4:
        raise FrameError(f"an f32le frame must hold whole 4-byte samples, got {len(data)} bytes")
    samples = np.frombuffer(data, "<f4").astype(np.float32)  # a copy, native order
    if not np.isfinite(samples).all():
        raise FrameError(f"an f32le frame holds {int((~np.isfinite(samples)).sum())} NaN or infinite sample(s)")
    return samples


def _check_end(text: str) -> None:
    try:
        message = json.loads(text)
    except ValueError:
        raise FrameError(f"a text frame must be JSON {{\"type\": \"end\"}}, got {text[:80]!r}") from None
    if not isinstance(message, dict) or message.get("type") != "end":
        raise FrameError(f"the only text frame a client sends is {{\"type\": \"end\"}}, got {text[:80]!r}")


class Outbox:
    """The messages waiting for a client: at most one merged update, then the final message. Never grows
    with a slow client: a newer update is merged into the pending one (``new`` texts joined)."""

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._final: dict[str, Any] | None = None
        self._closed = False
        self._wake = anyio.Event()
        self.merged = 0

    def update(self, message: dict[str, Any]) -> None:
        if self._pending is not None:
            message = {**message, "new": self._pending["new"] + message["new"]}
            self.merged += 1
        self._pending = message
        self._wake.set()

    def final(self, message: dict[str, Any]) -> None:
        self._final = message
        self._wake.set()

    async def get(self) -> dict[str, Any] | None:
        """The next message to send; ``None`` once the final message has been taken."""
        while True:
            if self._pending is not None:
                message, self._pending = self._pending, None
                return message
            if self._final is not None:
                message, self._final = self._final, None
                self._closed = True
                return message
            if self._closed:
                return None
            self._wake = anyio.Event()
            await self._wake.wait()


class StreamSession:
    """One client's stream: receives audio, runs ``rt.captions`` and sends its updates."""

    def __init__(self, ws: WebSocket, rt: Runtime, params: StreamParams, config: ServerConfig):
        self.ws = ws
        self.rt = rt
        self.params = params
        self.config = config
        self.outbox = Outbox()
        self._failure: tuple[int, str] | None = None
        self._gone = False
        self._going_away = False
        self._rx_scope: anyio.CancelScope | None = None
        self._tg: anyio.abc.TaskGroup | None = None

    def request_stop(self) -> None:
        """Shutdown: take no more audio, finish with what was heard (final message, close 1001)."""
        self._going_away = True
        if self._rx_scope is not None:
            self._rx_scope.cancel()

    def _fail(self, code: int, message: str | None) -> None:
        """End the stream with ``code`` (``message``: the error frame, ``None``: the client is gone)."""
        if self._failure is None and not self._gone:
            if message is None:
                self._gone = True
            else:
                self._failure = (code, message)
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def run(self) -> None:
        send_audio, recv_audio = anyio.create_memory_object_stream[np.ndarray](self.config.stream_queue_frames)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._receive, send_audio)
            tg.start_soon(self._transcribe, recv_audio)
            await self._send_loop()
            tg.cancel_scope.cancel()
        await self._close()

    async def _receive(self, send_audio: Any) -> None:
        idle = self.config.stream_idle_timeout_s
        async with send_audio:
            with anyio.CancelScope() as self._rx_scope:
                if self._going_away:
                    return
                while True:
                    with anyio.move_on_after(idle) as idle_scope:
                        message = await self.ws.receive()
                    if idle_scope.cancelled_caught:
                        self._fail(CLOSE_POLICY, f"no frame from the client for {idle:g} s")
                        return
                    if message["type"] == "websocket.disconnect":
                        self._fail(CLOSE_NORMAL, None)
                        return
                    try:
                        if message.get("bytes") is not None:
                            chunk = decode_frame(message["bytes"], self.params.encoding)
                            if chunk.size:
                                await send_audio.send(chunk)
                        elif message.get("text") is not None:
                            _check_end(message["text"])
                            return  # {"type": "end"}: closing send_audio ends the audio
                    except FrameError as exc:
                        self._fail(CLOSE_INVALID, str(exc))
                        return
                    except Exception as exc:  # a bug: the client learns of it, the server goes on
                        log.exception("stream receiver failed", exc_info=exc)
                        self._fail(CLOSE_INTERNAL, f"internal error: {type(exc).__name__}")
                        return

    async def _transcribe(self, recv_audio: Any) -> None:
        try:
            async with recv_audio, self.rt.captions(recv_audio, language=self.params.language,
                                                    sample_rate=self.params.sample_rate) as captions:
                async for u in captions:
                    if u.new or not u.final:
                        self.outbox.update({"type": "update", "committed": u.committed, "new": u.new,
                                            "tentative": u.tentative, "audio_s": round(u.audio_s, 3),
                                            "latency_s": round(u.latency_s, 3)})
                    if u.final:
                        self.outbox.final({"type": "final", "text": u.committed, "audio_s": round(u.audio_s, 3),
                                           "segments": [{"start": round(s.start, 3), "end": round(s.end, 3),
                                                         "text": s.text} for s in u.segments]})
                        return
            self.outbox.final({"type": "final", "text": "", "audio_s": 0.0, "segments": []})
        except AudioError as exc:
            self._fail(CLOSE_INVALID, f"bad audio: {exc}")
        except ValueError as exc:
            self._fail(CLOSE_POLICY, str(exc))
        except Exception as exc:
            log.exception("stream failed", exc_info=exc)
            self._fail(CLOSE_INTERNAL, f"internal error: {type(exc).__name__}")

    async def _send_loop(self) -> None:
        timeout = self.config.stream_send_timeout_s
        while (message := await self.outbox.get()) is not None:
            try:
                with anyio.fail_after(timeout):
                    await self.ws.send_text(json.dumps(message, ensure_ascii=False))
            except TimeoutError:
                log.warning("dropping a stream whose client took no message for %g s", timeout)
                self._fail(CLOSE_POLICY, None)
                return
            except (WebSocketDisconnect, RuntimeError, OSError):
                self._fail(CLOSE_NORMAL, None)
                return

    async def _close(self) -> None:
        if self._gone or self.ws.application_state == WebSocketState.DISCONNECTED:
            return
        if self._failure is not None:
            code, message = self._failure
            await _send_error_and_close(self.ws, code, message)
            return
        with anyio.move_on_after(self.config.stream_send_timeout_s):
            await _quiet_close(self.ws, CLOSE_GOING_AWAY if self._going_away else CLOSE_NORMAL)


async def _quiet_close(ws: WebSocket, code: int, reason: str = "") -> None:
    try:
        await ws.close(code, reason[:120])
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass


async def _send_error_and_close(ws: WebSocket, code: int, message: str) -> None:
    with anyio.move_on_after(5.0):
        try:
            await ws.send_text(json.dumps({"type": "error", "message": message}, ensure_ascii=False))
        except (WebSocketDisconnect, RuntimeError, OSError):
            return
        await _quiet_close(ws, code, message)


def _refusal_code(err: APIError, state: ServerState) -> int:
    if err.status == 503:
        return CLOSE_GOING_AWAY if state.draining else CLOSE_TRY_LATER
    return CLOSE_POLICY


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    """Live captions of streamed audio (see the module docstring for the protocol)."""
    state = server_state(ws)
    try:
        check_key(ws, state.config.api_key, allow_query=True)
        params = StreamParams.from_query(ws.query_params)
        rt = state.require_runtime()
        if len(state.streams) >= state.config.max_streams:
            raise APIError(503, f"too many streams ({state.config.max_streams} open); try again later",
                           code="too_many_streams")
    except APIError as err:  # browsers see no HTTP status on a refused handshake: accept, explain, close
        await ws.accept()
        await _send_error_and_close(ws, _refusal_code(err, state), err.message)
        return
    await ws.accept()
    session = StreamSession(ws, rt, params, state.config)
    state.add_stream(session)
    try:
        await session.run()
    finally:
        state.remove_stream(session)
