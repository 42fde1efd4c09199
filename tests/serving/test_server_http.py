"""``aiowhisper-npu serve``'s HTTP API with real clients: the official ``openai`` package (every response
format, a wrong key, random bytes), ``http.client`` and raw sockets for the limits, on one server process."""

from __future__ import annotations

import http.client
import io
import json
import socket
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai package (test extra)")
pytest.importorskip("fastapi", reason="the server needs the server extra (fastapi, uvicorn)")

import aiowhisper_npu as aw  # noqa: E402
from aiowhisper_npu.formats import format_timestamp  # noqa: E402
from aiowhisper_npu.server.auth import bearer_token, is_loopback, key_matches, open_binding_warning  # noqa: E402
from tests.support import DATA  # noqa: E402
from tests.support.server import ServerProcess, wait_until  # noqa: E402

KEY = "test-key-8f3a"
MAX_QUEUE = 8
MAX_UPLOAD_MB = 2
CLIPS = ("weather.wav", "door.wav")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(["--api-key", KEY, "--max-queue", str(MAX_QUEUE), "--max-upload-mb", str(MAX_UPLOAD_MB)]) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def reference() -> dict[str, aw.TranscriptionResult]:
    """The library's own results (same model, the server's default options) for each clip, and with word
    timestamps (``name + "+words"``)."""
    with aw.Runtime.sync("tiny.en") as rt:
        plain = {name: rt.transcribe(DATA / name) for name in CLIPS}
        return {**plain, **{name + "+words": rt.transcribe(DATA / name, word_timestamps=True) for name in CLIPS}}


def _request(server: ServerProcess, method: str, path: str, body: object = None,
             headers: dict[str, str] | None = None, chunked: bool = False) -> tuple[int, dict]:
    """A plain HTTP request (the standard library's client): status and JSON body."""
    host, port = server.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def _health(server: ServerProcess) -> dict:
    return _request(server, "GET", "/health")[1]


def _error(exc: openai.APIStatusError) -> dict:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def _wav_bytes(samples: np.ndarray, rate: int = 16000) -> bytes:
    """A 32-bit float WAV (WAVE_FORMAT_IEEE_FLOAT) of ``samples``, written by hand (NaN allowed)."""
    data = samples.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE" + b"fmt "
            + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data)


@pytest.mark.slow
def test_health_and_models(server: ServerProcess, client: openai.OpenAI) -> None:
    health = _health(server)
    assert health["status"] == "ok" and health["model"] == "tiny.en"
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "tiny.en" and "whisper-1" in ids


@pytest.mark.slow
@pytest.mark.parametrize("name", CLIPS)
def test_json_matches_the_library(client: openai.OpenAI, reference: dict, name: str) -> None:
    with open(DATA / name, "rb") as f:
        out = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert out.text == reference[name].text
    assert "close the door" in out.text or "light breeze" in out.text


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_formats(client: openai.OpenAI, reference: dict, fmt: str) -> None:
    ref = reference["weather.wav"]
    with open(DATA / "weather.wav", "rb") as f:
        out = client.audio.transcriptions.create(model="tiny.en", file=f, response_format=fmt)
    assert isinstance(out, str)
    if fmt == "text":
        assert out == ref.text + "\n"
        return
    lines = out.strip().splitlines()
    cues = [ln for ln in lines if "-->" in ln]
    assert len(cues) == len(ref.segments) >= 1
    start, end = cues[0].split(" --> ")
    sep = "," if fmt == "srt" else "."
    assert start == format_timestamp(ref.segments[0].start, decimal=sep)
    assert end == format_timestamp(ref.segments[0].end, decimal=sep)
    if fmt == "srt":
        assert lines[0] == "1"
    else:
        assert lines[0] == "WEBVTT"
    texts = " ".join(ln for ln in lines if ln and "-->" not in ln and ln not in ("WEBVTT", "1"))
    assert texts.strip() == ref.text


@pytest.mark.slow
@pytest.mark.parametrize("granularity", [None, "word"])
def test_verbose_json(client: openai.OpenAI, reference: dict, granularity: str | None) -> None:
    ref = reference["door.wav+words" if granularity else "door.wav"]
    extra = {"timestamp_granularities": [granularity]} if granularity else {}
    with open(DATA / "door.wav", "rb") as f:
        out = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json", **extra)
    assert out.text == ref.text and out.language == "english"
    assert out.duration == pytest.approx(ref.duration)
    assert [s.text for s in out.segments] == [s.text for s in ref.segments]
    assert [(s.start, s.end) for s in out.segments] == [(s.start, s.end) for s in ref.segments]
    assert [s.id for s in out.segments] == list(range(len(ref.segments)))
    assert all(s.start < s.end for s in out.segments)
    if granularity is None:
        assert out.words is None
        return
    ref_words = [w for s in ref.segments for w in s.words]
    assert [w.word for w in out.words] == [w.word.strip() for w in ref_words]
    assert [w.start for w in out.words] == pytest.approx([w.start for w in ref_words], abs=0.05)
    assert all(a.end <= b.start + 1e-6 for a, b in zip(out.words, out.words[1:]))


@pytest.mark.slow
def test_prompt_language_and_temperature_are_accepted(client: openai.OpenAI, reference: dict) -> None:
    with open(DATA / "door.wav", "rb") as f:
        out = client.audio.transcriptions.create(model="whisper-1", file=f, language="en", prompt="Doors.",
                                                 temperature=0.0)
    assert "door" in out.text.lower()


@pytest.mark.slow
def test_wrong_and_missing_key_are_401(server: ServerProcess) -> None:
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info, open(DATA / "door.wav", "rb") as f:
        bad.audio.transcriptions.create(model="whisper-1", file=f)
    assert info.value.status_code == 401 and _error(info.value)["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    status, body = _request(server, "POST", "/v1/audio/transcriptions", b"--b--\r\n",
                            {"Content-Type": "multipart/form-data; boundary=b"})
    assert status == 401 and body["error"]["code"] == "missing_api_key"


@pytest.mark.slow
def test_bad_audio_is_400_and_the_server_keeps_serving(client: openai.OpenAI, reference: dict) -> None:
    rng = np.random.default_rng(0)
    nan = np.zeros(16000, np.float32)
    nan[100] = np.nan
    for name, payload in [("random.wav", rng.bytes(50_000)), ("random.mp3", rng.bytes(20_000)),
                          ("empty.wav", b""), ("nan.wav", _wav_bytes(nan))]:
        with pytest.raises(openai.BadRequestError) as info:
            client.audio.transcriptions.create(model="whisper-1", file=(name, io.BytesIO(payload)))
        err = _error(info.value)
        assert info.value.status_code == 400 and err["param"] == "file" and err["code"] == "invalid_audio", name
    with open(DATA / "weather.wav", "rb") as f:
        assert client.audio.transcriptions.create(model="whisper-1", file=f).text == reference["weather.wav"].text


@pytest.mark.slow
def test_bad_fields_are_400_or_404(client: openai.OpenAI) -> None:
    cases = [({"response_format": "xml"}, 400, "response_format"), ({"temperature": 1.5}, 400, "temperature"),
             ({"language": "klingon"}, 400, "language"), ({"model": "gpt-4o-transcribe"}, 404, "model"),
             ({"timestamp_granularities": ["word"]}, 400, "timestamp_granularities")]
    for fields, status, param in cases:
        args = {"model": "whisper-1", **fields}
        with pytest.raises(openai.APIStatusError) as info, open(DATA / "door.wav", "rb") as f:
            client.audio.transcriptions.create(file=f, **args)
        assert info.value.status_code == status and _error(info.value)["param"] == param, fields


@pytest.mark.slow
def test_translation_needs_a_multilingual_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info, open(DATA / "door.wav", "rb") as f:
        client.audio.translations.create(model="whisper-1", file=f)
    assert _error(info.value)["code"] == "unsupported_model"


@pytest.mark.slow
def test_upload_over_the_limit_is_413(server: ServerProcess, client: openai.OpenAI) -> None:
    big = np.random.default_rng(1).bytes(MAX_UPLOAD_MB * 1024 * 1024 + 1000)
    with pytest.raises(openai.APIStatusError) as info:
        client.audio.transcriptions.create(model="whisper-1", file=("big.wav", io.BytesIO(big)))
    assert info.value.status_code == 413 and _error(info.value)["code"] == "file_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the server counts what it reads
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]
        yield b"\r\n--b--\r\n"

    status, body = _request(server, "POST", "/v1/audio/transcriptions", chunked(), chunked=True,
                            headers={"Authorization": f"Bearer {KEY}",
                                     "Content-Type": "multipart/form-data; boundary=b"})
    assert status == 413 and body["error"]["code"] == "file_too_large"

    host, port = server.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:  # declared too large: no body is read
        s.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                  f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(big)}\r\n\r\n".encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 413 ")
    assert wait_until(lambda: _health(server)["requests_in_progress"] == 0)


@pytest.mark.slow
def test_full_queue_is_503_with_retry_after(server: ServerProcess, client: openai.OpenAI, reference: dict) -> None:
    host, port = server.url.split("//")[1].split(":")
    held = []
    try:
        for _ in range(MAX_QUEUE):  # uploads that never finish: each holds a place
            s = socket.create_connection((host, int(port)))
            s.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                      "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n".encode())
            held.append(s)
        assert wait_until(lambda: _health(server)["requests_in_progress"] == MAX_QUEUE), _health(server)
        with pytest.raises(openai.APIStatusError) as info, open(DATA / "door.wav", "rb") as f:
            client.audio.transcriptions.create(model="whisper-1", file=f)
        assert info.value.status_code == 503 and _error(info.value)["code"] == "queue_full"
        assert int(info.value.response.headers["retry-after"]) >= 1
    finally:
        for s in held:
            s.close()
    assert wait_until(lambda: _health(server)["requests_in_progress"] == 0), _health(server)
    with open(DATA / "door.wav", "rb") as f:
        assert client.audio.transcriptions.create(model="whisper-1", file=f).text == reference["door.wav"].text


@pytest.mark.slow
def test_a_client_that_disconnects_cancels_its_transcription(server: ServerProcess) -> None:
    host, port = server.url.split("//")[1].split(":")
    audio = (DATA / "long_40s.wav").read_bytes()
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="long.wav"\r\n\r\n' + audio
            + b"\r\n--b--\r\n")
    before = _health(server)["requests_abandoned"]
    s = socket.create_connection((host, int(port)))
    try:
        s.sendall(f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
                  f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                  + body)
        assert wait_until(lambda: _health(server)["transcribing"] == 1)
    finally:
        s.close()  # gone before the answer: the server stops the work (a finished request is not "abandoned")
    assert wait_until(lambda: _health(server)["requests_abandoned"] == before + 1, 120), _health(server)
    assert _health(server)["requests_in_progress"] == _health(server)["transcribing"] == 0


@pytest.mark.slow
def test_eight_concurrent_requests_get_the_same_text(client: openai.OpenAI, reference: dict) -> None:
    audio = (DATA / "weather.wav").read_bytes()

    def one(i: int) -> str:
        return client.audio.transcriptions.create(model="whisper-1", file=(f"w{i}.wav", io.BytesIO(audio))).text

    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(one, range(8)))
    assert texts == [reference["weather.wav"].text] * 8


def test_auth_helpers() -> None:
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token("Bearer ") is None and bearer_token(None) is None
    assert key_matches("k1", "k1") and not key_matches("k1", "k2") and not key_matches("k1", None)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    assert open_binding_warning("0.0.0.0", None) is not None and "API key" in open_binding_warning("0.0.0.0", None)
    assert open_binding_warning("0.0.0.0", "k") is None and open_binding_warning("127.0.0.1", None) is None
