"""Load benchmark of ``aiowhisper-npu serve``: HTTP throughput and latency, WebSocket word commit latency,
and the server's memory over the run. The server is a real process started here (``--port 0``).

1. **HTTP**: N concurrent clients each POST 30 s of speech (the first 30 s of ``tests/data/long_40s.wav``,
   a 16-bit WAV) to ``/v1/audio/transcriptions`` ``--http-requests`` times in a row; requests/s over the
   level's wall time and p50/p95 request latency (send to response read).
2. **WebSocket**: N concurrent streams at real-time pace (``--chunk-s`` chunks of 16-bit PCM; chunk ``k`` is
   sent at ``start + (k + 1) * chunk``, streams started ``chunk / N`` apart). **Word commit latency** = the
   moment the update that commits a word arrives minus the moment the word's audio ended in the stream;
   word ends come from the server's own offline ``verbose_json`` with word timestamps on the same audio,
   matched to the committed words by a longest-common-subsequence alignment of their normalised text
   (``difflib``). N grows until p95 exceeds ``--goal-p95`` (3.3 s); the largest N within it is reported.
3. **Memory**: the server's RSS (``/proc/PID/status``) after warm-up, after the two parts above, and after a
   soak of ``--soak-s`` seconds of mixed load (2 streams + 2 HTTP clients); flat = the soak adds little.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/server_load.py \\
        --json bench/results/server_load.json --md bench/results/server_load.md
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import http.client
import io
import json
import re
import subprocess
import sys
import threading
import time
import wave
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import aiowhisper_npu as aw
from aiowhisper_npu.benchmark.harness import Run, pct, write_report
from aiowhisper_npu.transcription.metrics import word_error_rate as wer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
READY = re.compile(r"ready on http://([\d.]+):(\d+)")


# -- the server process ------------------------------------------------------------------------------------
class Server:
    """``python -m aiowhisper_npu serve`` on 127.0.0.1, an ephemeral port."""

    def __init__(self, args: list[str]):
        self.proc = subprocess.Popen([sys.executable, "-m", "aiowhisper_npu", "serve", "--port", "0",
                                      "--log-level", "warning", *args], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.addr: tuple[str, int] | None = None
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                m = READY.search(line)
                if m and self.addr is None:
                    self.addr = (m.group(1), int(m.group(2)))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(300) or self.addr is None:
            self.stop()
            raise RuntimeError("server did not start:\n" + "".join(self.lines[-40:]))

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- helpers -----------------------------------------------------------------------------------------------
def wav_bytes(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def post_transcription(addr: tuple[str, int], wav: bytes, fields: dict[str, str]) -> tuple[int, bytes]:
    boundary = "benchboundary7f"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="speech.wav"\r\n'
                 f"Content-Type: audio/wav\r\n\r\n".encode() + wav + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    conn = http.client.HTTPConnection(*addr, timeout=600)
    try:
        conn.request("POST", "/v1/audio/transcriptions", body=body,
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def norm_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


# -- part 1: HTTP ------------------------------------------------------------------------------------------
def http_level(addr: tuple[str, int], wav: bytes, n: int, per_client: int) -> dict[str, Any]:
    latencies: list[float] = []
    texts: set[str] = set()
    failures: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(per_client):
            t = time.perf_counter()
            status, body = post_transcription(addr, wav, {"model": "whisper-1"})
            took = time.perf_counter() - t
            with lock:
                if status == 200:
                    latencies.append(took)
                    texts.add(json.loads(body)["text"])
                else:
                    failures.append(status)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": n, "requests": len(latencies), "failed": failures, "wall_s": wall,
            "requests_per_s": len(latencies) / wall, "p50_s": pct(latencies, 50), "p95_s": pct(latencies, 95),
            "distinct_texts": len(texts)}


def http_inprocess(model: str, audio: np.ndarray, repeats: int) -> dict[str, Any]:
    """``rt.transcribe`` of the same audio in this process, one at a time: the N=1 level without the server."""
    latencies = []
    with aw.Runtime.sync(model) as rt:
        rt.transcribe(np.zeros(8000, np.float32), beam_size=1)  # warm, as the server is
        for _ in range(repeats):
            t = time.perf_counter()
            rt.transcribe(audio)
            latencies.append(time.perf_counter() - t)
    return {"clients": 1, "requests": repeats, "p50_s": pct(latencies, 50), "p95_s": pct(latencies, 95),
            "requests_per_s": repeats / sum(latencies)}


# -- part 2: WebSocket -------------------------------------------------------------------------------------
async def one_stream(url: str, pcm: np.ndarray, chunk_s: float, start: float) -> dict[str, Any]:
    import websockets

    step = int(chunk_s * 16000)
    commits: list[tuple[str, float]] = []  # (committed word, arrival time)
    final: dict[str, Any] = {}
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    async with websockets.connect(url, max_size=None) as ws:
        t0 = time.perf_counter()

        async def send() -> None:
            for k, i in enumerate(range(0, pcm.size, step)):
                await asyncio.sleep(max(0.0, t0 + (k + 1) * chunk_s - time.perf_counter()))
                await ws.send(pcm[i:i + step].tobytes())
            await ws.send(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send())
        async for raw in ws:
            m = json.loads(raw)
            now = time.perf_counter()
            if m["type"] == "update":
                commits += [(w, now) for w in norm_words(m["new"])]
            elif m["type"] == "final":
                final = m
        await sender
    return {"t0": t0, "commits": commits, "final": final.get("text", ""), "close": ws.close_code}


def commit_latencies(stream: dict[str, Any], ref_words: list[tuple[str, float]]) -> list[float]:
    got = [w for w, _ in stream["commits"]]
    sm = difflib.SequenceMatcher(a=[w for w, _ in ref_words], b=got, autojunk=False)
    out = []
    for block in sm.get_matching_blocks():
        for j in range(block.size):
            word_end = ref_words[block.a + j][1]
            out.append(stream["commits"][block.b + j][1] - (stream["t0"] + word_end))
    return out



async def one_inprocess_stream(rt: aw.Runtime, audio: np.ndarray, chunk_s: float, start: float) -> dict[str, Any]:
    """The same stream as :func:`one_stream`, straight on ``rt.captions()`` (no server, no socket)."""
    step = int(chunk_s * 16000)
    commits: list[tuple[str, float]] = []
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    t0 = time.perf_counter()

    async def source() -> Any:
        for k, i in enumerate(range(0, audio.size, step)):
            await asyncio.sleep(max(0.0, t0 + (k + 1) * chunk_s - time.perf_counter()))
            yield audio[i:i + step]

    final = ""
    async with rt.captions(source()) as captions:
        async for u in captions:
            now = time.perf_counter()
            commits += [(w, now) for w in norm_words(u.new)]
            if u.final:
                final = u.committed
    return {"t0": t0, "commits": commits, "final": final, "close": None}


async def inprocess_level(rt: aw.Runtime, audio: np.ndarray, n: int, chunk_s: float,
                          ref: dict[str, Any]) -> dict[str, Any]:
    base = time.perf_counter() + 0.2
    streams = await asyncio.gather(*(one_inprocess_stream(rt, audio, chunk_s, base + i * chunk_s / n)
                                     for i in range(n)))
    return summarise(n, streams, ref)


async def ws_part(args: argparse.Namespace, url: str, pcm: np.ndarray, audio: np.ndarray,
                  ref: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Stream levels through the server; for N in ``--inprocess``, the same level in-process right after
    (paired, so machine load affects both alike; the server idles meanwhile)."""
    ws_rows: list[dict[str, Any]] = []
    inproc_rows: list[dict[str, Any]] = []
    async with AsyncExitStack() as stack:
        rt = None
        if args.inprocess:
            rt = await stack.enter_async_context(aw.Runtime(args.model))
            await rt.transcribe(np.zeros(8000, np.float32), beam_size=1)  # warm, as the server is
        for n in args.streams:
            row = await ws_level(url, pcm, n, args.chunk_s, ref)
            ws_rows.append(row)
            print(f"ws    N={n}: word commit p50 {row['p50_s']:.2f} s, p95 {row['p95_s']:.2f} s, "
                  f"max {row['max_s']:.2f} s, matched {row['words_matched']}/{row['words_expected']}, "
                  f"WER {row['wer_vs_offline']:.3f}, closes {row['closes']}", flush=True)
            if rt is not None and n in args.inprocess:
                ip = await inprocess_level(rt, audio, n, args.chunk_s, ref)
                inproc_rows.append(ip)
                print(f"in-process N={n}: word commit p50 {ip['p50_s']:.2f} s, p95 {ip['p95_s']:.2f} s, "
                      f"max {ip['max_s']:.2f} s, WER {ip['wer_vs_offline']:.3f}", flush=True)
            if row["p95_s"] > args.stop_factor * args.goal_p95:  # collapsed: larger N only gets worse
                break
    return ws_rows, inproc_rows


def summarise(n: int, streams: Sequence[dict[str, Any]], ref: dict[str, Any]) -> dict[str, Any]:
    lat = [x for s in streams for x in commit_latencies(s, ref["words"])]
    return {"streams": n, "words_matched": len(lat), "words_expected": n * len(ref["words"]),
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95), "max_s": max(lat) if lat else float("nan"),
            "wer_vs_offline": float(np.mean([wer(s["final"], ref["text"]) for s in streams])),
            "closes": sorted({s["close"] for s in streams if s["close"] is not None})}


async def ws_level(url: str, pcm: np.ndarray, n: int, chunk_s: float, ref: dict[str, Any]) -> dict[str, Any]:
    base = time.perf_counter() + 0.2
    streams = await asyncio.gather(*(one_stream(url, pcm, chunk_s, base + i * chunk_s / n) for i in range(n)))
    return summarise(n, streams, ref)


# -- the run -----------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--clients", type=int, nargs="*", default=[1, 2, 4, 8], help="HTTP client counts")
    p.add_argument("--http-requests", type=int, default=2, help="requests per HTTP client and level")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6], help="WebSocket stream counts")
    p.add_argument("--chunk-s", type=float, default=0.5)
    p.add_argument("--goal-p95", type=float, default=3.3)
    p.add_argument("--stop-factor", type=float, default=2.0, help="stop adding streams past this x the goal")
    p.add_argument("--inprocess", type=int, nargs="*", default=[1, 4],
                   help="stream counts to repeat in-process on rt.captions, for the server's overhead")
    p.add_argument("--no-http-inprocess", dest="http_inprocess", action="store_false",
                   help="skip the in-process rt.transcribe run paired with the 1-client HTTP level")
    p.add_argument("--soak-s", type=float, default=180.0)
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    return p.parse_args(argv)


def soak(server: Server, url: str, wav: bytes, pcm: np.ndarray, chunk_s: float, seconds: float,
         samples: list[tuple[float, float]]) -> int:
    """Mixed load for ``seconds``: two HTTP clients in a loop, two streams back to back; the server's RSS is
    sampled every 15 s into ``samples`` as (seconds, MB). Returns the requests and streams completed."""
    addr = server.addr
    assert addr is not None
    t_start = time.perf_counter()
    stop = t_start + seconds
    done = [0]

    def sample() -> None:
        while time.perf_counter() < stop:
            samples.append((round(time.perf_counter() - t_start, 1), round(server.rss_mb(), 1)))
            time.sleep(15)

    def http_client() -> None:
        while time.perf_counter() < stop:
            post_transcription(addr, wav, {"model": "whisper-1"})
            done[0] += 1

    async def streams() -> None:
        while time.perf_counter() < stop:
            base = time.perf_counter() + 0.1
            await asyncio.gather(one_stream(url, pcm, chunk_s, base), one_stream(url, pcm, chunk_s, base + 0.25))
            done[0] += 2

    threads = [threading.Thread(target=http_client) for _ in range(2)] + [threading.Thread(target=sample)]
    for t in threads:
        t.start()
    asyncio.run(streams())
    for t in threads:
        t.join()
    return done[0]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    write_report(to_markdown(result), result, md_path=args.md, json_path=args.json)
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the server, measure the HTTP levels, the WebSocket levels and the soak; the result."""
    record = Run(args, "python bench/server_load.py")
    audio = aw.load_audio(DATA / "long_40s.wav")[:30 * 16000]
    wav = wav_bytes(audio)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    server = Server(["--model", args.model, "--max-queue", "64", "--max-streams", "64"])
    try:
        addr = server.addr
        assert addr is not None
        url = f"ws://{addr[0]}:{addr[1]}/v1/stream"
        rss = {"after_warmup_mb": server.rss_mb()}
        status, body = post_transcription(addr, wav, {"model": "whisper-1", "response_format": "verbose_json",
                                                      "timestamp_granularities[]": "word"})
        assert status == 200, body
        doc = json.loads(body)
        ref = {"text": doc["text"],
               "words": [(w, x["end"]) for x in doc["words"] for w in norm_words(x["word"])]}
        http_rows: list[dict[str, Any]] = []
        http_inproc: list[dict[str, Any]] = []
        for n in args.clients:
            row = http_level(addr, wav, n, args.http_requests)
            http_rows.append(row)
            if n == 1 and args.http_inprocess:
                ip = http_inprocess(args.model, audio, max(2, args.http_requests))
                print(f"http  in-process N=1: {ip['requests_per_s']:.3f} req/s, p50 {ip['p50_s']:.2f} s", flush=True)
                http_inproc.append(ip)
            print(f"http  N={n}: {row['requests_per_s']:.3f} req/s, p50 {row['p50_s']:.2f} s, "
                  f"p95 {row['p95_s']:.2f} s, failed {row['failed']}, distinct texts {row['distinct_texts']}",
                  flush=True)
        ws_rows, inproc = asyncio.run(ws_part(args, url, pcm, audio, ref))
        rss["after_load_mb"] = server.rss_mb()
        rss_series: list[tuple[float, float]] = []
        soaked = soak(server, url, wav, pcm, args.chunk_s, args.soak_s, rss_series) if args.soak_s > 0 else 0
        rss["after_soak_mb"] = server.rss_mb()
        print(f"rss during the soak (s, MB): {rss_series}", flush=True)
        print(f"rss: {rss} (soak: {soaked} requests/streams in {args.soak_s:.0f} s)", flush=True)
    finally:
        server.stop()
    within = [r["streams"] for r in ws_rows if r["p95_s"] <= args.goal_p95]
    return {"model": args.model, **record.record(), "http": http_rows, "http_inprocess": http_inproc,
            "ws": ws_rows, "inprocess": inproc, "rss": rss, "soak_s": args.soak_s, "soak_items": soaked,
            "soak_rss_mb": rss_series, "max_streams_within_goal": max(within, default=0),
            "goal_p95_s": args.goal_p95, "chunk_s": args.chunk_s}


def to_markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"# server_load: {r['model']}, {m['cpus']} CPUs, load average (1 min) {m['load_avg_start'][0]:.2f} "
             f"at the start, {m['load_avg_end'][0]:.2f} at the end", "",
             "HTTP, 30 s of speech per request:", "", "| clients | requests | req/s | p50 s | p95 s | failed |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {h['clients']} | {h['requests']} | {h['requests_per_s']:.3f} | {h['p50_s']:.2f} | {h['p95_s']:.2f} "
              f"| {len(h['failed'])} |" for h in r["http"]]
    lines += [f"| in-process `rt.transcribe`, 1 at a time | {h['requests']} | {h['requests_per_s']:.3f} | "
              f"{h['p50_s']:.2f} | {h['p95_s']:.2f} | |" for h in r.get("http_inprocess", [])]
    lines += ["", f"WebSocket, real-time streams, {r['chunk_s']} s chunks, word commit latency:", "",
              "| streams | p50 s | p95 s | max s | words matched | WER vs offline |", "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {w['streams']} | {w['p50_s']:.2f} | {w['p95_s']:.2f} | {w['max_s']:.2f} | "
              f"{w['words_matched']}/{w['words_expected']} | {w['wer_vs_offline']:.3f} |" for w in r["ws"]]
    if r["inprocess"]:
        lines += ["", "The same streams in-process on `rt.captions` (no server), "
                  "run right after each server level:", "",
                  "| streams | p50 s | p95 s | max s | words matched | WER vs offline |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {w['streams']} | {w['p50_s']:.2f} | {w['p95_s']:.2f} | {w['max_s']:.2f} | "
                  f"{w['words_matched']}/{w['words_expected']} | {w['wer_vs_offline']:.3f} |" for w in r["inprocess"]]
    rss = r["rss"]
    lines += ["", f"Largest N with p95 <= {r['goal_p95_s']} s: **{r['max_streams_within_goal']}**", "",
              f"RSS: {rss['after_warmup_mb']:.0f} MB after warm-up, {rss['after_load_mb']:.0f} MB after the runs "
              f"above, {rss['after_soak_mb']:.0f} MB after a {r['soak_s']:.0f} s soak ({r['soak_items']} requests "
              "and streams)", "", "RSS during the soak (s: MB): "
              + ", ".join(f"{t:.0f}: {m:.0f}" for t, m in r["soak_rss_mb"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
