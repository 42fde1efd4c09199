"""``aiowhisper-npu serve``: the OpenAI-compatible API, the WebSocket stream and the page
(:mod:`aiowhisper_npu.server`; needs the ``server`` extra); with ``--ray``, the same app as a Ray Serve
deployment of one or more replicas (:mod:`aiowhisper_npu.server.ray_app`; the ``ray`` extra)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import AiowhisperError

__all__ = ["add_arguments", "run_serve_command"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny.en", help="model name (tiny.en, base) or model directory")
    p.add_argument("--backend", default="cpu", choices=("cpu", "sim", "xrt"), help="device backend")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (0: an ephemeral port, printed when ready)")
    p.add_argument("--api-key", default=None,
                   help="key clients must send as 'Authorization: Bearer KEY' (default: $AIOWHISPER_API_KEY)")
    p.add_argument("--max-upload-mb", type=float, default=100.0, help="largest upload in MiB (413 above)")
    p.add_argument("--max-queue", type=int, default=16,
                   help="HTTP transcriptions in the server at once; more get 503 + Retry-After")
    p.add_argument("--max-streams", type=int, default=8, help="WebSocket streams at once; more are closed (1013)")
    p.add_argument("--beam-size", type=int, default=5, help="beam size of HTTP transcriptions (1: greedy)")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds in-flight requests and streams get to finish on SIGTERM")
    p.add_argument("--stream-idle-timeout", type=float, default=30.0,
                   help="close a WebSocket stream that sends nothing for this many seconds (1008)")
    p.add_argument("--depth", type=int, default=4, help="pipeline depth: most tiles in flight")
    p.add_argument("--lanes", type=int, default=None, help="parallel kernel workers (default: 2 on cpu, 1 else)")
    p.add_argument("--manifest", default=None, help="kernel manifest for the xrt/sim backends")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="numerics: fp32 (default, the reference) or bf16 (the NPU's: bf16 products, fp32 sums)")
    p.add_argument("--loop", default="auto", choices=("auto", "asyncio", "uvloop"),
                   help="event loop (auto: uvloop when installed)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    ray = p.add_argument_group("scale-out on Ray Serve (the 'ray' extra; docs/serving.md)")
    ray.add_argument("--ray", action="store_true", help="serve as a Ray Serve deployment (one runtime per replica)")
    ray.add_argument("--ray-address", default=None,
                     help="Ray cluster to join: auto, HOST:6379 or ray://HOST:10001 (default: $RAY_ADDRESS, "
                          "else a local Ray started for this command)")
    count = ray.add_mutually_exclusive_group()
    count.add_argument("--replicas", type=int, default=None, help="number of replicas (default 1)")
    count.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                       help="let Serve's autoscaler keep between MIN and MAX replicas")
    ray.add_argument("--target-ongoing", type=float, default=2.0,
                     help="autoscaling: target requests in progress per replica (default 2)")
    ray.add_argument("--ray-cpus", type=float, default=None,
                     help="CPUs per replica (default: 1 for xrt and sim, one per lane for cpu)")
    ray.add_argument("--ray-resources", default=None, metavar="JSON",
                     help="custom resources per replica (default: '{\"npu\": 1}' for xrt, none otherwise)")
    ray.add_argument("--max-queued", type=int, default=None,
                     help="requests Serve holds when every replica is full; more get 503 (default: --max-queue)")
    ray.add_argument("--ray-proxy", default="head", choices=("head", "every-node"),
                     help="where Serve's HTTP proxy listens: the head node only, or every node")


def run_serve_command(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT."""
    try:
        from ..server import ServerConfig, serve
    except ImportError as exc:
        raise AiowhisperError(f"the server needs the 'server' extra: pip install 'aiowhisper-npu[server]' "
                              f"({exc})") from exc
    runtime_options: dict[str, Any] = {"pipeline_depth": args.depth, "lanes": args.lanes,
                                       "precision": args.precision}
    if args.manifest:
        runtime_options["manifest"] = args.manifest
    try:
        config = ServerConfig.from_env(
            args.api_key, model=args.model, backend=args.backend, host=args.host, port=args.port,
            max_upload_mb=args.max_upload_mb, max_queue=args.max_queue, max_streams=args.max_streams,
            beam_size=args.beam_size, shutdown_timeout_s=args.shutdown_timeout,
            stream_idle_timeout_s=args.stream_idle_timeout, runtime_options=runtime_options)
    except ValueError as exc:
        raise AiowhisperError(str(exc)) from exc
    if args.ray:
        return _run_on_ray(config, args)
    if args.ray_address or args.replicas is not None or args.autoscale is not None:
        raise AiowhisperError("--ray-address, --replicas and --autoscale need --ray")
    serve(config, loop=args.loop, log_level=args.log_level)
    return 0


def _run_on_ray(config: Any, args: argparse.Namespace) -> int:
    from ..server.scaleout import ScaleOut, parse_autoscale, parse_resources

    try:
        scale = ScaleOut(address=args.ray_address, replicas=args.replicas or 1,
                         autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
                         target_ongoing=args.target_ongoing, num_cpus=args.ray_cpus,
                         resources=parse_resources(args.ray_resources) if args.ray_resources else None,
                         max_queued=args.max_queued,
                         proxy_location="HeadOnly" if args.ray_proxy == "head" else "EveryNode")
    except ValueError as exc:
        raise AiowhisperError(str(exc)) from exc
    if config.port == 0:
        raise AiowhisperError("--port 0 is not supported with --ray: Serve's HTTP proxy needs a fixed port")
    try:
        from ..server.ray_app import run_on_ray
    except ImportError as exc:
        raise AiowhisperError(f"--ray needs Ray Serve: pip install 'aiowhisper-npu[ray]' ({exc})") from exc
    run_on_ray(config, scale, log_level=args.log_level)
    return 0
