"""The live-caption WebSocket ``/v1/stream`` with the ``websockets`` package: audio in, updates and a final
message out; malformed frames (1007), keys (1008), the stream limit (1013), idle clients, and the merging
outbox that bounds what a slow client can make the server hold."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Iterator

import numpy as np
import pytest

websockets = pytest.importorskip("websockets", reason="the stream tests need the websockets package (test extra)")
pytest.importorskip("fastapi", reason="the server needs the server extra (fastapi, uvicorn)")

import aiowhisper_npu as aw  # noqa: E402
from aiowhisper_npu.server.websocket import FrameError, Outbox, decode_frame  # noqa: E402
from tests.support import CLIPS, DATA  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

KEY = "stream-key-1c9e"
MAX_STREAMS = 2
IDLE_S = 8
HANG_S = 240.0  # a hang guard for a loaded machine, not a timing assertion


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(["--api-key", KEY, "--max-streams", str(MAX_STREAMS),
                        "--stream-idle-timeout", str(IDLE_S)]) as srv:
        yield srv


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _s16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


async def _session(url: str, frames: list[bytes | str], *, headers: dict[str, str] | None = None,
                   pace_s: float = 0.0) -> tuple[list[dict[str, Any]], int | None]:
    """Connect, send ``frames`` (bytes: audio, str: text) while reading, return (messages, close code)."""
    messages: list[dict[str, Any]] = []
    async with websockets.connect(url, additional_headers=headers or {}, max_size=None) as ws:

        async def send() -> None:
            try:
                for frame in frames:
                    await ws.send(frame)
                    if pace_s:
                        await asyncio.sleep(pace_s)
            except websockets.ConnectionClosed:
                pass

        sender = asyncio.create_task(send())
        try:
            async for raw in ws:
                messages.append(json.loads(raw))
        except websockets.ConnectionClosed:
            pass
        await sender
        return messages, ws.close_code


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, HANG_S))


def _check_protocol(messages: list[dict[str, Any]], code: int | None) -> dict[str, Any]:
    """Updates whose committed text only grows by ``new``, then one final message, then 1000."""
    assert code == 1000, messages[-3:]
    assert messages and messages[-1]["type"] == "final", messages[-3:]
    committed = ""
    for m in messages[:-1]:
        assert m["type"] == "update" and set(m) == {"type", "committed", "new", "tentative", "audio_s", "latency_s"}
        assert m["committed"] == committed + m["new"], (committed, m)
        committed = m["committed"]
    final = messages[-1]
    assert final["text"].strip() == committed.strip() or final["text"].startswith(committed.strip())
    assert "".join(s["text"] for s in final["segments"]).strip() == final["text"].strip()
    assert all(s["start"] <= s["end"] for s in final["segments"])
    return final


def _recall(text: str, clip: str) -> float:
    want = _words(CLIPS[clip])
    got = set(_words(text))
    return sum(w in got for w in want) / len(want)


@pytest.mark.slow
def test_stream_pcm_s16(server: ServerProcess) -> None:
    audio = aw.load_audio(DATA / "weather.wav")
    frames: list[bytes | str] = [_s16(audio[i:i + 1600]) for i in range(0, audio.size, 1600)]
    frames.append(json.dumps({"type": "end"}))
    messages, code = run(_session(server.ws_url + f"/v1/stream?api_key={KEY}", frames, pace_s=0.05))
    final = _check_protocol(messages, code)
    assert final["audio_s"] == pytest.approx(audio.size / 16000, abs=0.01)
    assert _recall(final["text"], "weather.wav") >= 0.6, final["text"]


@pytest.mark.slow
def test_stream_f32_at_44k_with_the_bearer_header(server: ServerProcess) -> None:
    audio = aw.load_audio(DATA / "door_44k_stereo.wav", sr=44100)
    frames: list[bytes | str] = [audio[i:i + 22050].astype("<f4").tobytes() for i in range(0, audio.size, 22050)]
    frames.append(json.dumps({"type": "end"}))
    messages, code = run(_session(server.ws_url + "/v1/stream?encoding=f32le&sample_rate=44100&language=en",
                                  frames, headers={"Authorization": f"Bearer {KEY}"}))
    final = _check_protocol(messages, code)
    assert final["audio_s"] == pytest.approx(audio.size / 44100, abs=0.01)
    assert _recall(final["text"], "door_44k_stereo.wav") >= 0.6, final["text"]


@pytest.mark.slow
@pytest.mark.parametrize("encoding,frame,why", [
    ("pcm_s16le", b"\x00\x01\x02", "2-byte"),
    ("f32le", b"\x00" * 6, "4-byte"),
    ("f32le", np.array([0.0, np.nan, 0.1], "<f4").tobytes(), "NaN"),
    ("f32le", np.array([np.inf], "<f4").tobytes(), "NaN or infinite"),
    ("pcm_s16le", "hello", "JSON"),
    ("pcm_s16le", json.dumps({"type": "pause"}), "only text frame"),
])
def test_malformed_frames_get_an_error_and_1007(server: ServerProcess, encoding: str, frame: bytes | str,
                                                 why: str) -> None:
    good = np.zeros(3200, "<i2" if encoding == "pcm_s16le" else "<f4").tobytes()
    messages, code = run(_session(server.ws_url + f"/v1/stream?api_key={KEY}&encoding={encoding}",
                                  [good, frame, good]))
    assert code == 1007, messages
    assert messages[-1]["type"] == "error" and why in messages[-1]["message"], messages


@pytest.mark.slow
@pytest.mark.parametrize("query,headers", [("", None), ("?api_key=wrong", None),
                                           ("", {"Authorization": "Bearer wrong"})])
def test_missing_or_wrong_key_gets_1008(server: ServerProcess, query: str, headers: dict[str, str] | None) -> None:
    messages, code = run(_session(server.ws_url + "/v1/stream" + query, [b"\x00\x00"], headers=headers))
    assert code == 1008 and [m["type"] for m in messages] == ["error"], messages
    assert "API key" in messages[0]["message"]


@pytest.mark.slow
@pytest.mark.parametrize("query", ["encoding=mp3", "sample_rate=abc", "sample_rate=10", "language=klingon"])
def test_bad_query_gets_1008(server: ServerProcess, query: str) -> None:
    messages, code = run(_session(server.ws_url + f"/v1/stream?api_key={KEY}&{query}", []))
    assert code == 1008 and messages[0]["type"] == "error", messages
    assert query.split("=")[0] in messages[0]["message"]


@pytest.mark.slow
def test_stream_limit_gets_1013_and_frees_up(server: ServerProcess) -> None:
    async def scenario() -> None:
        url = server.ws_url + f"/v1/stream?api_key={KEY}"
        held = [await websockets.connect(url) for _ in range(MAX_STREAMS)]
        try:
            for ws in held:  # both are open and served: a frame in, nothing wrong
                await ws.send(np.zeros(1600, "<i2").tobytes())
            await asyncio.sleep(0.5)
            messages, code = await _session(url, [b"\x00\x00"])
            assert code == 1013 and messages[0]["type"] == "error" and "too many" in messages[0]["message"]
        finally:
            for ws in held:
                await ws.close()
        for _ in range(200):  # the server notices the closes
            messages, code = await _session(url, [json.dumps({"type": "end"})])
            if code != 1013:
                break
            await asyncio.sleep(0.1)
        assert code == 1000 and messages[-1] == {"type": "final", "text": "", "audio_s": 0.0, "segments": []}

    run(scenario())


@pytest.mark.slow
def test_oversized_frame_is_closed_with_1009(server: ServerProcess) -> None:
    messages, code = run(_session(server.ws_url + f"/v1/stream?api_key={KEY}", [b"\x00" * (2 << 20)]))
    assert code == 1009, messages


@pytest.mark.slow
def test_idle_client_is_closed(server: ServerProcess) -> None:
    messages, code = run(_session(server.ws_url + f"/v1/stream?api_key={KEY}", [np.zeros(800, "<i2").tobytes()]))
    assert code == 1008 and messages[-1]["type"] == "error" and "no frame" in messages[-1]["message"], messages


def test_decode_frame() -> None:
    s16 = np.array([-32768, 0, 16384, 32767], "<i2")
    assert decode_frame(s16.tobytes(), "pcm_s16le").tolist() == [-1.0, 0.0, 0.5, 32767 / 32768]
    f32 = np.array([0.25, -0.5], "<f4")
    out = decode_frame(f32.tobytes(), "f32le")
    assert out.dtype == np.float32 and out.tolist() == [0.25, -0.5] and out.flags.writeable
    for bad, enc in [(b"\x00", "pcm_s16le"), (b"\x00" * 3, "f32le"), (np.array([np.nan], "<f4").tobytes(), "f32le")]:
        with pytest.raises(FrameError):
            decode_frame(bad, enc)


def test_outbox_merges_updates_for_a_slow_client() -> None:
    async def scenario() -> None:
        box = Outbox()
        for i in range(1000):  # the client reads nothing meanwhile
            box.update({"type": "update", "committed": "x" * (i + 1), "new": "x", "tentative": f"t{i}",
                        "audio_s": i, "latency_s": 0.1})
        box.final({"type": "final", "text": "x" * 1000, "segments": [], "audio_s": 999})
        first = await box.get()
        assert first is not None and first["new"] == "x" * 1000 and first["tentative"] == "t999"
        assert first["committed"] == "x" * 1000 and box.merged == 999
        assert (await box.get()) == {"type": "final", "text": "x" * 1000, "segments": [], "audio_s": 999}
        assert (await box.get()) is None

    asyncio.run(scenario())
