"""Scale-out benchmark of ``serve --ray``: throughput and p50/p95 latency against the replica count (1, 2),
with the ``sim`` backend on a two-node Ray cluster simulated on this machine (``ray.cluster_utils``, each
node advertising ``{"npu": 1}`` and one CPU), and what N hosts would give, on paper.

On one machine the replicas share its cores: the host work (log-mel, decoding, and the simulator's own
numerics, which a real NPU would not cost) does not scale with replicas here. So the run also reports:

- per replica, the **simulated-NPU busy time**: requests served (the ``X-Aiowhisper-Replica`` header) x the
  modeled device time of one request (``SimNPU.modeled_busy_s``, the sum of its modeled run spans, measured
  in-process on the same clip and options), beside the level's wall time;
- the **CPU seconds per request** of the replica processes and of Serve's HTTP proxy (``/proc/PID/stat``),
  and, in-process, a request's host work without the sim's numerics (see :func:`calibrate`).

From those: one host's ceiling is ``min(1 / NPU s per request, host cores / host CPU s per request)``; the
proxy's ceiling is ``proxy cores / proxy CPU s per request``; N hosts give ``N x`` the host ceiling until the
proxy's is reached (the first bottleneck among router, decoder CPU and NPU is the smallest ceiling).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/ray_scaleout.py \\
        --json bench/results/ray_scaleout_tiny.json --md bench/results/ray_scaleout_tiny.md
"""

from __future__ import annotations

import argparse
import http.client
import os
import resource
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

import aiowhisper_npu as aw
from aiowhisper_npu.audio.io import load_audio
from aiowhisper_npu.benchmark.harness import Run, pct, write_report
from server_load import wav_bytes

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
CLK = os.sysconf("SC_CLK_TCK")


def calibrate(audio: np.ndarray, beam_size: int, repeats: int) -> dict[str, float]:
    """Per request, in this process (medians of ``repeats``): the modeled NPU seconds (``SimNPU.modeled_busy_s``),
    the decoder engine's busy seconds (``decoder_stats().busy_s``: its thread's forward passes and task
    logic), the CPU seconds of the whole request (with the sim's numerics, which a real NPU does not cost),
    and the host CPU of encoding without them (log-mel, tiling, buffer syncs: ``SimConfig(numerics=False)``).
    The host work of one request on a real NPU host = decoder busy + encoder host CPU."""
    from aiowhisper_npu.sim import SimConfig

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def median(xs: list[float]) -> float:
        return float(np.median(xs))

    with aw.Runtime.sync("tiny.en", backend="sim") as rt:
        inner = rt.runtime
        dev = inner.device.xrt.sim_device(getattr(inner.device, "device_index", 0))
        rt.transcribe(audio, beam_size=beam_size)  # warm: builds the decoder
        busy, dec, cpus = [], [], []
        for _ in range(repeats):
            b0, d0, c0 = dev.modeled_busy_s, rt.call(lambda r: r.decoder_stats().busy_s), cpu()
            rt.transcribe(audio, beam_size=beam_size)
            busy.append(dev.modeled_busy_s - b0)
            dec.append(rt.call(lambda r: r.decoder_stats().busy_s) - d0)
            cpus.append(cpu() - c0)
    with aw.Runtime.sync("tiny.en", backend="sim", sim_config=SimConfig(numerics=False)) as rt:
        rt.encode(audio)
        enc = []
        for _ in range(repeats):
            c0 = cpu()
            rt.encode(audio)
            enc.append(cpu() - c0)
    out = {"npu_s": median(busy), "decoder_busy_s": median(dec), "cpu_s_with_sim_numerics": median(cpus),
           "encoder_host_cpu_s": median(enc)}
    out["host_cpu_s"] = out["decoder_busy_s"] + out["encoder_host_cpu_s"]
    return out


def _cpu_of(pids: Sequence[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK
        except (OSError, IndexError, ValueError):
            pass
    return total


def _pids(title: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines()
            if len(line.split(None, 1)) == 2 and line.split(None, 1)[1].startswith(title)]


def post(port: int, body: bytes, boundary: str) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/v1/audio/transcriptions", body=body,
                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = conn.getresponse()
        r.read()
        return r.status, r.headers.get("X-Aiowhisper-Replica", ""), time.perf_counter() - t0
    finally:
        conn.close()


def level(port: int, wav: bytes, beam_size: int, clients: int, per_client: int, npu_s: float) -> dict[str, Any]:
    boundary = "rayscaleout5c"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            f"Content-Type: audio/wav\r\n\r\n").encode() + wav + f"\r\n--{boundary}--\r\n".encode()
    replica_pids, proxy_pids = _pids("ray::ServeReplica:aiowhisper"), _pids("ray::ProxyActor")
    with ThreadPoolExecutor(clients) as pool:  # warm-up: every replica decodes once
        list(pool.map(lambda _: post(port, body, boundary), range(2 * clients)))
    c_rep, c_proxy = _cpu_of(replica_pids), _cpu_of(proxy_pids)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda _: post(port, body, boundary), range(clients * per_client)))
    wall = time.perf_counter() - t0
    c_rep, c_proxy = _cpu_of(replica_pids) - c_rep, _cpu_of(proxy_pids) - c_proxy
    ok = [r for r in results if r[0] == 200]
    lat = [r[2] for r in ok]
    served: dict[str, int] = {}
    for r in ok:
        served[r[1]] = served.get(r[1], 0) + 1
    return {"requests": len(results), "ok": len(ok), "wall_s": wall, "req_per_s": len(ok) / wall,
            "p50_s": pct(lat, 50), "p95_s": pct(lat, 95),
            "replica_cpu_s_per_request": c_rep / max(1, len(ok)),
            "proxy_cpu_s_per_request": c_proxy / max(1, len(ok)),
            "replicas": {name.rsplit("#", 1)[-1]: {"requests": n, "npu_busy_s": n * npu_s,
                                                   "npu_busy_pct_of_wall": 100.0 * n * npu_s / wall}
                         for name, n in sorted(served.items())}}


def paper(cal: dict[str, float], proxy_cpu_s: float, host_cores: int, proxy_cores: int) -> dict[str, Any]:
    """One host's ceiling and N hosts', from per-request costs. A replica's decoder is one engine thread
    (requests share it in batches), so its ceiling is ``1 / decoder busy`` at this concurrency-1 cost (a
    lower bound: batching raises it); the encoder's host work spreads over the other cores; the NPU's ceiling
    is ``1 / modeled NPU s``; one proxy process routes ``proxy cores / proxy CPU s`` requests a second."""
    ceilings = {"NPU": 1.0 / cal["npu_s"], "decoder CPU": 1.0 / cal["decoder_busy_s"],
                "encoder host CPU": max(1, host_cores - 1) / cal["encoder_host_cpu_s"]}
    bound_by = min(ceilings, key=lambda k: ceilings[k])
    host_cap = ceilings[bound_by]
    router_cap = proxy_cores / proxy_cpu_s if proxy_cpu_s > 0 else float("inf")
    return {"host_cores": host_cores, "proxy_cores": proxy_cores,
            "ceilings_req_per_s": ceilings, "host_ceiling_req_per_s": host_cap, "host_bound_by": bound_by,
            "npu_utilisation_at_host_ceiling_pct": 100.0 * host_cap * cal["npu_s"],
            "router_ceiling_req_per_s": router_cap, "hosts_until_router_bound": router_cap / host_cap,
            "n_hosts_req_per_s": {n: min(n * host_cap, router_cap) for n in (1, 2, 4, 8, 16, 32, 64)},
            "first_bottleneck": "router" if router_cap < host_cap else bound_by}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", default="weather.wav", help="tests/data clip sent by every request")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--per-client", type=int, default=6)
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("--calibration-repeats", type=int, default=3)
    p.add_argument("--host-cores", type=int, default=8, help="cores of the NPU host assumed on paper")
    p.add_argument("--proxy-cores", type=int, default=1, help="cores Serve's proxy uses (one event loop)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    write_report(to_markdown(report), report, md_path=args.md, json_path=args.json)
    return 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Calibrate in-process, then measure 1 and 2 replicas on a two-node local Ray cluster; the report."""
    record = Run(args, "python bench/ray_scaleout.py")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from aiowhisper_npu.server import ServerConfig
    from aiowhisper_npu.server.ray_app import deploy
    from aiowhisper_npu.server.scaleout import APP_NAME, ScaleOut

    audio = load_audio(DATA / args.clip)
    print("calibrating in-process ...", file=sys.stderr)
    cal = calibrate(audio, args.beam_size, args.calibration_repeats)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"npu": 1}, "include_dashboard": False, "object_store_memory": 80 << 20})
    levels: dict[int, Any] = {}
    try:
        cluster.add_node(num_cpus=1, resources={"npu": 1}, object_store_memory=80 << 20)
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        config = ServerConfig(backend="sim", port=port, beam_size=args.beam_size, max_queue=64)
        for n in (1, 2):
            print(f"{n} replica(s) ...", file=sys.stderr)
            deploy(config, ScaleOut(replicas=n, resources={"npu": 1}, num_cpus=0.5), log_level="warning")
            levels[n] = level(port, wav_bytes(audio), args.beam_size, args.clients, args.per_client, cal["npu_s"])
            serve.delete(APP_NAME)
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
        cluster.shutdown()
    proxy_cpu = max(levels[n]["proxy_cpu_s_per_request"] for n in levels)
    return {"clip": args.clip, "audio_s": len(audio) / 16000, "beam_size": args.beam_size,
            "clients": args.clients, "per_client": args.per_client, "calibration": cal, "levels": levels,
            "speedup_2_over_1": levels[2]["req_per_s"] / levels[1]["req_per_s"],
            "paper": paper(cal, proxy_cpu, args.host_cores, args.proxy_cores), **record.record()}


def to_markdown(r: dict[str, Any]) -> str:
    cal, pp = r["calibration"], r["paper"]
    lines = [f"# serve --ray scale-out, sim backend, tiny.en ({r['clip']}, {r['audio_s']:.1f} s, beam "
             f"{r['beam_size']}; {r['clients']} clients x {r['per_client']} requests per level)", "",
             f"Machine: {r['machine']['cpus']} cores, shared: load average {r['machine']['load_avg_start']} at the "
             f"start, {r['machine']['load_avg_end']} at the end. Both replicas and the clients share these cores "
             "(two simulated nodes of one CPU each).", "",
             "| replicas | req/s | p50 s | p95 s | replica CPU s/req | proxy CPU s/req | per replica: requests, "
             "sim-NPU busy s (% of wall) |", "|---:|---:|---:|---:|---:|---:|---|"]
    for n, lv in r["levels"].items():
        reps = "; ".join(f"{k}: {v['requests']}, {v['npu_busy_s']:.2f} s ({v['npu_busy_pct_of_wall']:.1f} %)"
                         for k, v in lv["replicas"].items())
        lines.append(f"| {n} | {lv['req_per_s']:.2f} | {lv['p50_s']:.2f} | {lv['p95_s']:.2f} | "
                     f"{lv['replica_cpu_s_per_request']:.2f} | {lv['proxy_cpu_s_per_request']:.3f} | {reps} |")
    lines += ["", f"2 replicas / 1 replica throughput on this machine: {r['speedup_2_over_1']:.2f}x.", "",
              "Per request, in-process: modeled NPU {npu:.3f} s; host work {host:.3f} s = decoder engine busy "
              "{dec:.3f} s + encoder host CPU without the sim's numerics {enc:.3f} s (the whole request took "
              "{cpu:.2f} s of CPU with the numerics, which a real NPU does not cost)."
              .format(npu=cal["npu_s"], host=cal["host_cpu_s"], dec=cal["decoder_busy_s"],
                      enc=cal["encoder_host_cpu_s"], cpu=cal["cpu_s_with_sim_numerics"]),
              "", "On paper, per NPU host ({cores} cores): NPU {npu:.1f} req/s, decoder (one engine thread) {dec:.1f} "
              "req/s, encoder host work {enc:.1f} req/s: one host gives {host:.1f} req/s, bound by the **{by}** "
              "(its NPU then {util:.0f} % busy). One proxy ({pc} core) routes at most {router:.0f} req/s, so hosts "
              "add linearly up to ~{until:.0f} hosts; then the router is the bottleneck."
              .format(cores=pp["host_cores"], npu=pp["ceilings_req_per_s"]["NPU"],
                      dec=pp["ceilings_req_per_s"]["decoder CPU"],
                      enc=pp["ceilings_req_per_s"]["encoder host CPU"], host=pp["host_ceiling_req_per_s"],
                      by=pp["host_bound_by"], util=pp["npu_utilisation_at_host_ceiling_pct"], pc=pp["proxy_cores"],
                      router=pp["router_ceiling_req_per_s"], until=pp["hosts_until_router_bound"]), "",
              "| hosts | req/s on paper |", "|---:|---:|"]
    lines += [f"| {n} | {v:.1f} |" for n, v in pp["n_hosts_req_per_s"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
