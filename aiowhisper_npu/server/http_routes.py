"""The HTTP routes: ``GET /`` (the live-caption page), ``GET /health``, ``GET /v1/models`` and OpenAI's
``POST /v1/audio/transcriptions`` and ``POST /v1/audio/translations`` (multipart form, the same fields and
response shapes as OpenAI's audio API; see :mod:`.responses`)."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.datastructures import FormData, UploadFile
from starlette.requests import ClientDisconnect

from ..decoder.languages import language_code
from ..errors import AudioError
from ..runtime.runtime import Runtime
from ..transcription.results import TranscriptionResult
from .auth import check_key
from .errors import APIError
from .responses import RESPONSE_FORMATS, render_response
from .state import ServerState, server_state

__all__ = ["router", "TranscriptionRequest", "parse_form"]

router = APIRouter()

#: Model names accepted besides the served model's own (what OpenAI clients send by default).
MODEL_ALIASES = ("whisper-1",)


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(Path(__file__).parent / "static" / "index.html", media_type="text/html")


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """``200 {"status": "ok", ...}`` when serving; 503 while starting or shutting down."""
    state = server_state(request)
    ok = state.runtime is not None and not state.draining
    body = {"status": "ok" if ok else ("shutting_down" if state.draining else "starting"),
            "model": state.model_id, "backend": state.config.backend,
            "requests_in_progress": state.admission.active, "transcribing": state.transcribing,
            "max_queue": state.admission.limit,
            "requests_rejected": state.admission.rejected, "requests_abandoned": state.requests_abandoned,
            "streams": len(state.streams),
            "max_streams": state.config.max_streams, "streams_served": state.streams_served}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    """OpenAI's model list: the served model (and ``whisper-1``, which names it too)."""
    state = server_state(request)
    check_key(request, state.config.api_key)
    ids = [state.model_id, *MODEL_ALIASES]
    return JSONResponse({"object": "list", "data": [{"id": i, "object": "model", "created": 0,
                                                     "owned_by": "aiowhisper-npu"} for i in ids]})


@router.post("/v1/audio/transcriptions")
async def transcriptions(request: Request) -> Response:
    """Speech to text in the audio's language (OpenAI's ``audio.transcriptions.create``)."""
    return await _serve(request, "transcribe")


@router.post("/v1/audio/translations")
async def translations(request: Request) -> Response:
    """Speech to English text (OpenAI's ``audio.translations.create``); needs a multilingual model."""
    return await _serve(request, "translate")


@dataclass(frozen=True)
class TranscriptionRequest:
    """The validated fields of one request."""

    upload: UploadFile
    task: str
    response_format: str
    language: str | None
    prompt: str | None
    temperature: tuple[float, ...] | None  # None: the default fallback schedule
    words: bool

    def options(self, beam_size: int) -> dict[str, Any]:
        """:meth:`Runtime.transcribe` keywords."""
        opts: dict[str, Any] = dict(task=self.task, language=self.language, initial_prompt=self.prompt or None,
                                    word_timestamps=self.words, beam_size=beam_size)
        if self.temperature is not None:
            opts["temperature"] = self.temperature
        return opts


def _field(form: FormData, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise APIError(400, f"'{name}' must be a form field, not a file", param=name)
    return value.strip()


def _temperature(raw: str | None) -> tuple[float, ...] | None:
    """OpenAI's ``temperature``: 0 (or absent) lets the server raise it on failure (the fallback schedule);
    t in (0, 1] starts the schedule at t (openai-whisper's rule: t, t+0.2, ... up to 1)."""
    if raw is None or raw == "":
        return None
    try:
        t = float(raw)
    except ValueError:
        raise APIError(400, f"temperature must be a number between 0 and 1, got {raw!r}",
                       param="temperature") from None
    if not 0.0 <= t <= 1.0:
        raise APIError(400, f"temperature must be between 0 and 1, got {raw!r}", param="temperature")
    if t == 0.0:
        return None
    steps = int(round((1.0 - t) / 0.2 + 1e-9))
    return tuple(round(t + 0.2 * i, 6) for i in range(steps + 1))


def parse_form(form: FormData, task: str, state: ServerState) -> TranscriptionRequest:
    """Check the form's fields as OpenAI's API does; a bad one is a 400 (or 404 for an unknown model)."""
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise APIError(400, "'file' is required: the audio, as a multipart file field", param="file")
    model = _field(form, "model")
    if model and model not in (state.model_id, state.config.model, *MODEL_ALIASES):
        raise APIError(404, f"The model '{model}' does not exist; this server serves '{state.model_id}'",
                       param="model", code="model_not_found")
    fmt = _field(form, "response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise APIError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; got {fmt!r}",
                       param="response_format")
    granularities = [g.strip() for g in form.getlist("timestamp_granularities[]") + form.getlist(
        "timestamp_granularities") if isinstance(g, str) and g.strip()]
    for g in granularities:
        if g not in ("word", "segment"):
            raise APIError(400, f"timestamp_granularities must be 'word' or 'segment', got {g!r}",
                           param="timestamp_granularities")
    if granularities and fmt != "verbose_json":
        raise APIError(400, "timestamp_granularities needs response_format 'verbose_json'",
                       param="timestamp_granularities")
    if (_field(form, "stream") or "false").lower() not in ("false", "0", ""):
        raise APIError(400, "stream=true is not supported by this server; use the WebSocket /v1/stream",
                       param="stream")
    language = _field(form, "language") or None
    if language is not None:
        if task == "translate":
            raise APIError(400, "translations take no 'language' (the output is English)", param="language")
        try:
            language = language_code(language)
        except ValueError as exc:
            raise APIError(400, str(exc), param="language") from None
    return TranscriptionRequest(upload, task, fmt, language, _field(form, "prompt"),
                                _temperature(_field(form, "temperature")), "word" in granularities)


async def _serve(request: Request, task: str) -> Response:
    state = server_state(request)
    check_key(request, state.config.api_key)
    rt = state.require_runtime()
    if task == "translate" and (rt.model is None or not rt.model.dims.is_multilingual):
        raise APIError(400, f"'{state.model_id}' is an English-only model: translations need a multilingual "
                            "model (serve --model base)", param="model", code="unsupported_model")
    with state.admission.admit():
        try:
            form = await request.form(max_files=1, max_fields=32)
        except ClientDisconnect:
            return Response(status_code=499)  # nobody is left to read it
        try:
            req = parse_form(form, task, state)
            path = await _save_upload(req.upload)
            state.transcribing += 1
            try:
                result = await _transcribe_unless_gone(request, rt, path, req.options(state.config.beam_size))
            finally:
                state.transcribing -= 1
                await anyio.to_thread.run_sync(path.unlink)
        finally:
            await form.close()
    if result is None:
        state.requests_abandoned += 1
        return Response(status_code=499)
    return render_response(result, req.response_format, task=task, words=req.words)


async def _save_upload(upload: UploadFile) -> Path:
    """The upload in a named temporary file (the decoders read paths); 400 when it is empty."""
    suffix = "".join(c for c in Path(upload.filename or "").suffix[:12] if c.isalnum() or c == ".")
    fd, name = tempfile.mkstemp(prefix="aiowhisper-upload-", suffix=suffix)

    def copy() -> int:
        with os.fdopen(fd, "wb") as out:
            upload.file.seek(0)
            shutil.copyfileobj(upload.file, out, 1 << 20)
            return out.tell()

    path = Path(name)
    try:
        size = await anyio.to_thread.run_sync(copy)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if size == 0:
        path.unlink(missing_ok=True)
        raise APIError(400, "The audio file is empty", param="file", code="invalid_audio")
    return path


async def _transcribe_unless_gone(request: Request, rt: Runtime, path: Path,
                                  options: dict[str, Any]) -> TranscriptionResult | None:
    """Transcribe; stop (and return ``None``) if the client disconnects first. Bad audio is a 400."""
    result: TranscriptionResult | None = None
    error: Exception | None = None
    async with anyio.create_task_group() as tg:

        async def watch_disconnect() -> None:
            while not await request.is_disconnected():
                await anyio.sleep(0.25)
            tg.cancel_scope.cancel()

        tg.start_soon(watch_disconnect)
        try:
            result = await rt.transcribe(path, **options)
        except Exception as exc:  # raised below, outside the task group (which would wrap it in a group)
            error = exc
        tg.cancel_scope.cancel()
    if isinstance(error, AudioError):
        raise APIError(400, f"Invalid audio: {str(error).replace(str(path), 'file')}", param="file",
                       code="invalid_audio") from error
    if isinstance(error, ValueError):  # an option the transcriber refused
        raise APIError(400, str(error)) from error
    if error is not None:
        raise error
    return result
