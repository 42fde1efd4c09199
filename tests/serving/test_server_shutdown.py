"""SIGTERM: in-flight HTTP requests finish, open streams get their final message and a close with 1001,
new work is refused, and the process exits (by the re-raised signal, as uvicorn does)."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from typing import Any

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai package (test extra)")
websockets = pytest.importorskip("websockets", reason="the stream tests need the websockets package (test extra)")
pytest.importorskip("fastapi", reason="the server needs the server extra (fastapi, uvicorn)")

import aiowhisper_npu as aw  # noqa: E402
from tests.support import DATA  # noqa: E402
from tests.support.server import ServerProcess, wait_until  # noqa: E402


def _health(srv: ServerProcess) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(srv.url + "/health", timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


@pytest.mark.slow
def test_sigterm_finishes_requests_and_streams() -> None:
    """An HTTP request in flight completes; a stream gets its final message and a close with 1001."""
    with ServerProcess(["--shutdown-timeout", "120"]) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        result: dict[str, Any] = {}

        def request() -> None:
            try:
                with open(DATA / "long_40s.wav", "rb") as f:
                    result["text"] = client.audio.transcriptions.create(model="whisper-1", file=f).text
            except Exception as exc:  # reported by the assertion below
                result["error"] = exc

        async def stream() -> tuple[list[dict[str, Any]], int | None]:
            audio = aw.load_audio(DATA / "long_40s.wav")
            pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
            messages: list[dict[str, Any]] = []
            async with websockets.connect(srv.ws_url + "/v1/stream") as ws:

                async def send() -> None:  # real-time pace, never an end: the shutdown ends it
                    try:
                        for i in range(0, len(pcm), 3200):
                            await ws.send(pcm[i:i + 3200])
                            await asyncio.sleep(0.1)
                    except websockets.ConnectionClosed:
                        pass

                sender = asyncio.create_task(send())
                t = threading.Thread(target=request)
                try:
                    async for raw in ws:
                        messages.append(json.loads(raw))
                        if len(messages) == 2:  # the stream is live: start the request, then SIGTERM
                            t.start()
                            ok = await asyncio.to_thread(
                                wait_until, lambda: _health(srv)["requests_in_progress"] == 1, 120)
                            assert ok, srv.log
                            srv.terminate()
                except websockets.ConnectionClosed:
                    pass
                sender.cancel()
                t.join(300)
                return messages, ws.close_code

        messages, close_code = asyncio.run(asyncio.wait_for(stream(), 400))
        code = srv.wait(180)
    assert "error" not in result, f"{result.get('error')!r}\n{srv.log}"
    assert "close the door" in result["text"].lower(), result["text"]
    assert close_code == 1001, (messages[-3:], srv.log)
    assert messages[-1]["type"] == "final" and messages[-1]["audio_s"] > 0, messages[-3:]
    last_committed = [m["committed"] for m in messages if m["type"] == "update"][-1]
    assert messages[-1]["text"].strip().startswith(last_committed.strip()), messages[-3:]
    assert code in (0, -signal.SIGTERM), srv.log
