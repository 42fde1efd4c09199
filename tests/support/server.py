"""Starts ``aiowhisper-npu serve`` as a real process for the server tests, and stops it for sure.

The server listens on 127.0.0.1 with an ephemeral port (``--port 0``); it prints
``aiowhisper-npu serve: ready on http://127.0.0.1:PORT`` once the runtime is open and warm. The process runs
this worktree's package (cwd is the repository root). Its log is kept for failure messages.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Iterator

from tests.support import ROOT

READY = re.compile(r"aiowhisper-npu serve: ready on (http://\S+)")
START_TIMEOUT_S = 180.0  # a hang guard for a loaded machine, not a timing assertion


class ServerProcess:
    """One ``aiowhisper-npu serve`` process: ``with ServerProcess(["--api-key", "k"]) as srv: srv.url``."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, model: str = "tiny.en"):
        self.args = ["--model", model, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning", *args]
        inherited = {k: v for k, v in os.environ.items() if k != "AIOWHISPER_API_KEY"}  # keys: only as asked
        self.env = {**inherited, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def ws_url(self) -> str:
        return "ws" + self.url[len("http"):]

    @property
    def log(self) -> str:
        return "".join(self.lines[-80:])

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            m = READY.search(line)
            if m and not self._ready.is_set():
                self.url = m.group(1)
                self._ready.set()
        self._ready.set()  # the process ended (check returncode)

    def start(self) -> ServerProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "aiowhisper_npu", "serve", *self.args], cwd=ROOT,
                                     env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, name="server-log", daemon=True)
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT_S) or not self.url:
            self.stop()
            raise RuntimeError(f"the server did not start:\n{self.log}")
        return self

    def terminate(self) -> None:
        """Send SIGTERM (the graceful shutdown)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 120.0) -> int:
        """The exit code (``-SIGTERM`` when it ended by the re-raised signal, as uvicorn does)."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        if self._reader is not None:
            self._reader.join(10)
        return code

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it does not end; always reaps the process."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.proc.wait()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._reader is not None:
            self._reader.join(10)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running_server(args: list[str], **kwargs: object) -> Iterator[ServerProcess]:
    """A pytest fixture body: a started server, stopped after the module."""
    with ServerProcess(args, **kwargs) as srv:  # type: ignore[arg-type]
        yield srv


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true (a hang guard: ``False`` after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
