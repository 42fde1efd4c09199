"""Stream a WAV file through the Whisper encoder at real-time pace and print every update as it arrives.

    python examples/stream_file.py                      # examples/hello.wav, tiny.en, 1 s chunks, real time
    python examples/stream_file.py speech.wav --model base --chunk-ms 500 --context bucketed
    python examples/stream_file.py --no-realtime        # as fast as the encoder goes

A "microphone" task plays the file into a bounded memory object stream in real time (chunk k is handed over
once its audio would have been recorded); ``rt.encode_stream`` turns the chunks into updates: partial ones for the
growing 30 s window, then one final update per window, whose hidden states equal ``rt.encode`` of the file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import AsyncIterator

import anyio
import numpy as np
from anyio.streams.memory import MemoryObjectSendStream

import aiowhisper_npu as aw

HERE = Path(__file__).resolve().parent


async def microphone(audio: np.ndarray, chunk: int, realtime: bool, send: MemoryObjectSendStream[np.ndarray]) -> None:
    """Play ``audio`` into ``send`` in ``chunk``-sample pieces, in real time if asked."""
    start = anyio.current_time()
    async with send:
        for i in range(0, audio.size, chunk):
            piece = audio[i : i + chunk]
            if realtime:
                await anyio.sleep_until(start + (i + piece.size) / aw.SAMPLE_RATE)
            await send.send(piece)


async def main(args: argparse.Namespace) -> None:
    audio = aw.load_audio(args.file)
    chunk = max(1, round(args.chunk_ms * aw.SAMPLE_RATE / 1000))
    print(f"{args.file}: {audio.size / aw.SAMPLE_RATE:.2f} s, {args.chunk_ms} ms chunks, "
          f"{'real time' if args.realtime else 'as fast as possible'}, model {args.model}, context {args.context}")
    async with aw.Runtime(args.model) as rt, anyio.create_task_group() as tg:
        send, receive = anyio.create_memory_object_stream[np.ndarray](16)
        tg.start_soon(microphone, audio, chunk, args.realtime, send)

        async def chunks() -> AsyncIterator[np.ndarray]:
            async with receive:
                async for piece in receive:
                    yield piece

        async with rt.encode_stream(chunks(), update_every_s=args.update_every_s, context=args.context) as stream:
            async for upd in stream:
                kind = "FINAL  " if upd.final else "partial"
                print(f"[window {upd.window}] {upd.start_s:6.2f}-{upd.end_s:6.2f} s {kind} "
                      f"hidden {upd.hidden_states.shape} latency {upd.latency_s * 1e3:6.1f} ms "
                      f"(queued {upd.lag.queued_audio_s:.2f} s, {upd.lag.compute_s_per_audio_s:.2f} compute s "
                      f"per audio s)", flush=True)
        lag = stream.lag
        print(f"done: {lag.updates} updates, {lag.finals} final, {lag.partials_skipped} partials coalesced, "
              f"{lag.compute_s_per_audio_s:.3f} compute s per audio s")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", nargs="?", default=str(HERE / "hello.wav"), help="a WAV file (default: hello.wav)")
    p.add_argument("--model", default="tiny.en", help="tiny.en, base, or a model directory")
    p.add_argument("--chunk-ms", type=int, default=1000, help="chunk length in milliseconds")
    p.add_argument("--update-every-s", type=float, default=1.0, help="audio seconds between partial updates")
    p.add_argument("--context", default="full", choices=("full", "bucketed"), help="encoder context of partials")
    p.add_argument("--no-realtime", dest="realtime", action="store_false", help="feed as fast as possible")
    return p.parse_args()


if __name__ == "__main__":
    anyio.run(main, parse_args())
