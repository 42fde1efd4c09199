"""SIGTERM: in-flight HTTP requests finish, open streams get their final message and a close with 1001,
new work is refused, and the process exits (by the re-raised signal, as uvicorn does)."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import numpy as np
import pytest

openai = pytest.importorskip("openai", reason="the server tests need the openai package (test extra)")
pytest.importorskip("fastapi", reason="the server needs the server extra (fastapi, uvicorn)")

from conftest import CLIPS, DATA  # noqa: E402
from server_harness import ServerProcess, wait_until  # noqa: E402


def _health(srv: ServerProcess) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(srv.url + "/health", timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def test_sigterm_lets_the_in_flight_request_finish() -> None:
    with ServerProcess(["--shutdown-timeout", "120"]) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=300)
        result: dict[str, Any] = {}

        def request() -> None:
            try:
                with open(DATA / "long_40s.wav", "rb") as f:
                    result["text"] = client.audio.transcriptions.create(model="whisper-1", file=f).text
            except Exception as exc:  # reported by the assertion below
                result["error"] = exc

        t = threading.Thread(target=request)
        t.start()
        assert wait_until(lambda: _health(srv)["requests_in_progress"] == 1, 120), srv.log
        srv.terminate()
        code = srv.wait(180)
        t.join(60)
        assert "error" not in result, f"{result.get('error')!r}\n{srv.log}"
        words = CLIPS["long_40s.wav"].lower()
        assert "close the door" in result["text"].lower() and "the museum" in words
        assert code in (0, -signal.SIGTERM), srv.log
        assert "Application shutdown complete" in srv.log or code == -signal.SIGTERM
