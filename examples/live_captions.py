"""Live captions of a WAV file played at real-time pace, or of the microphone.

    python examples/live_captions.py                       # examples/hello.wav, tiny.en, 0.5 s chunks
    python examples/live_captions.py speech.wav --model base
    python examples/live_captions.py --mic                 # needs `pip install sounddevice` (and a microphone)
    python examples/live_captions.py --no-realtime         # as fast as the runtime goes

``rt.captions`` turns the chunks into caption updates: ``committed`` text, which never changes once
shown, and a ``tentative`` tail that the next updates may still revise. On a terminal the captions are
redrawn in place (committed plain, tentative dimmed, with ``rich``); otherwise each update prints one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import anyio
import numpy as np

import aiowhisper_npu as aw

HERE = Path(__file__).resolve().parent


async def file_chunks(audio: np.ndarray, chunk: int, realtime: bool) -> AsyncIterator[np.ndarray]:
    """``audio`` in ``chunk``-sample pieces; in real time, piece k once its audio would have been recorded."""
    start = anyio.current_time()
    for i in range(0, audio.size, chunk):
        piece = audio[i : i + chunk]
        if realtime:
            await anyio.sleep_until(start + (i + piece.size) / aw.SAMPLE_RATE)
        yield piece


async def microphone_chunks(chunk: int) -> AsyncIterator[np.ndarray]:
    """The default microphone, 16 kHz mono, until Ctrl-C (``sounddevice`` is imported only here)."""
    try:
        import sounddevice as sd  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit("--mic needs the sounddevice package: pip install sounddevice") from None
    send, receive = anyio.create_memory_object_stream[np.ndarray](64)
    token = anyio.lowlevel.current_token()

    def callback(indata: Any, frames: int, when: Any, status: Any) -> None:  # on PortAudio's thread
        try:
            anyio.from_thread.run_sync(send.send_nowait, indata[:, 0].astype(np.float32).copy(), token=token)
        except anyio.WouldBlock:
            pass  # the captions fell far behind: drop audio rather than block the audio thread

    with sd.InputStream(samplerate=aw.SAMPLE_RATE, channels=1, blocksize=chunk, dtype="float32", callback=callback):
        async with receive:
            async for piece in receive:
                yield piece


class Screen:
    """Committed text plain and the tentative tail dimmed, redrawn in place on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = Live(console=self.console, auto_refresh=False) if self.console.is_terminal else None

    def show(self, u: aw.CaptionUpdate) -> None:
        if self.live is not None:
            from rich.text import Text

            text = Text(u.committed)
            text.append(u.tentative, style="dim")
            self.live.update(text, refresh=True)
        elif u.new or u.final:
            print(f"[{u.audio_s:6.2f} s] {u.new.strip()}" + ("  (final)" if u.final else ""), flush=True)


async def main(args: argparse.Namespace) -> None:
    chunk = max(1, round(args.chunk_ms * aw.SAMPLE_RATE / 1000))
    if args.mic:
        source: AsyncIterator[np.ndarray] = microphone_chunks(chunk)
        print("listening (Ctrl-C to stop)", file=sys.stderr)
    else:
        audio = aw.load_audio(args.file)
        print(f"{args.file}: {audio.size / aw.SAMPLE_RATE:.2f} s, {'real time' if args.realtime else 'fast'}",
              file=sys.stderr)
        source = file_chunks(audio, chunk, args.realtime)
    screen = Screen()
    async with aw.Runtime(args.model) as rt:
        async with rt.captions(source, update_every_s=args.chunk_ms / 1000) as s:
            if screen.live is not None:
                screen.live.start()
            try:
                async for u in s:
                    screen.show(u)
            finally:
                if screen.live is not None:
                    screen.live.stop()
    print(f"\n{u.committed}" if screen.live is None else "")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", nargs="?", default=str(HERE / "hello.wav"))
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--chunk-ms", type=int, default=500)
    parser.add_argument("--no-realtime", dest="realtime", action="store_false")
    parser.add_argument("--mic", action="store_true", help="caption the microphone (needs sounddevice)")
    try:
        anyio.run(main, parser.parse_args())
    except KeyboardInterrupt:
        pass
