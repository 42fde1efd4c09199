"""The live-caption page in a real browser: Debian's headless Chromium captures a WAV file as its microphone
(``--use-file-for-fake-audio-capture``), the page streams it through an AudioWorklet to ``/v1/stream``, and its
committed text must hold the clip's words. Driven through the DevTools protocol with ``websockets``.

Skipped, with the reason, where Chromium is not installed (``.ci/run`` tries ``apt-get install chromium``).
Set ``AIOWHISPER_SCREENSHOT=path.png`` to keep the page's screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

websockets = pytest.importorskip("websockets", reason="the browser test needs the websockets package (test extra)")
pytest.importorskip("fastapi", reason="the server needs the server extra (fastapi, uvicorn)")

import aiowhisper_npu as aw  # noqa: E402
from tests.support import CLIPS, DATA  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")]

KEY = "browser-key-77d1"
CLIPS_SPOKEN = ("weather.wav", "door.wav")
HANG_S = 240.0  # a hang guard for a loaded machine, not a timing assertion


def _speech_wav(path: Path) -> float:
    """Silence, the two clips with a pause between, silence: 16 kHz 16-bit mono. Returns its seconds."""
    gap = np.zeros(16000, np.float32)
    parts = [gap]
    for name in CLIPS_SPOKEN:
        parts += [aw.load_audio(DATA / name), gap]
    audio = np.concatenate(parts + [gap])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return audio.size / 16000


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess([], env={"AIOWHISPER_API_KEY": KEY}) as srv:  # the key from the environment
        yield srv


class Browser:
    """Headless Chromium with a fake microphone, and its DevTools endpoint."""

    def __init__(self, url: str, wav: Path, profile: Path):
        self.profile = profile
        assert CHROMIUM is not None
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--autoplay-policy=no-user-gesture-required", f"--user-data-dir={profile}",
             "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}%noloop",
             "--use-fake-ui-for-media-stream", "--remote-debugging-port=0", "--window-size=900,600", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    def devtools_port(self) -> int:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if port_file.exists() and port_file.read_text().strip():
                return int(port_file.read_text().split()[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    def page_ws(self) -> str:
        port = self.devtools_port()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
            if pages:
                return str(pages[0]["webSocketDebuggerUrl"])
            time.sleep(0.1)
        raise RuntimeError("no page target")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class DevTools:
    """Minimal Chrome DevTools protocol client: one request at a time."""

    def __init__(self, ws: Any):
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg["result"])

    async def evaluate(self, expression: str) -> Any:
        out = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def test_page_captions_the_fake_microphone(server: ServerProcess, tmp_path: Path) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:  # the key from AIOWHISPER_API_KEY is enforced
        urllib.request.urlopen(server.url + "/v1/models", timeout=30)
    assert info.value.code == 401
    wav = tmp_path / "speech.wav"
    seconds = _speech_wav(wav)
    browser = Browser(f"{server.url}/?autostart=1&api_key={KEY}", wav, tmp_path / "profile")
    try:
        state = asyncio.run(asyncio.wait_for(_drive(browser, seconds), HANG_S))
    finally:
        browser.close()
    final = state["final"]
    assert state["error"] is None and final is not None, state
    assert state["committed"] == final["text"] and state["updates"] >= 3, state
    expected = [w for name in CLIPS_SPOKEN for w in _words(CLIPS[name])]
    got = set(_words(final["text"]))
    recall = sum(w in got for w in expected) / len(expected)
    assert recall >= 0.6, (final["text"], expected)
    assert {"breeze", "door"} <= got, final["text"]


async def _drive(browser: Browser, seconds: float) -> dict[str, Any]:
    shot = os.environ.get("AIOWHISPER_SCREENSHOT")
    async with websockets.connect(await asyncio.to_thread(browser.page_ws), max_size=None) as ws:
        dt = DevTools(ws)

        async def screenshot() -> None:
            png = await dt.call("Page.captureScreenshot", format="png")
            Path(shot).write_bytes(base64.b64decode(png["data"]))  # type: ignore[arg-type]

        state: dict[str, Any] = {}
        taken = False
        while not state or state["audio_s"] < seconds + 0.5:  # the page hears the file in real time
            await asyncio.sleep(0.25)
            state = await dt.evaluate("JSON.stringify(window.captions || null)")
            state = json.loads(state) if state and state != "null" else {"audio_s": 0, "error": None}
            if state.get("error") or str(state.get("state", "")).startswith("closed"):
                return state
            if shot and not taken and state.get("committed") and state.get("tentative") and state["audio_s"] > 5:
                await screenshot()  # committed and tentative text on screen together
                taken = True
        await dt.evaluate("window.stopCaptions()")
        while state.get("final") is None and not state.get("error"):
            await asyncio.sleep(0.2)
            state = json.loads(await dt.evaluate("JSON.stringify(window.captions)"))
        if shot and not taken:
            await screenshot()
        return state
