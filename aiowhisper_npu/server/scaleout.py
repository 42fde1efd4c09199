"""Scale-out settings: how ``aiowhisper-npu serve --ray`` sizes, places and bounds its Ray Serve replicas.

Plain data and arithmetic, importable without Ray (the deployment itself is :mod:`.ray_app`):

- :class:`ScaleOut`: replica count or autoscaling range, the cluster address, per-replica resources;
- :func:`replica_resources`: what one replica asks of its node. ``xrt``: one ``npu`` (a custom resource each
  NPU host advertises with ``ray start --resources '{"npu": 1}'``) and one CPU for the decoder; ``cpu``: one
  CPU per kernel lane (2 by default); ``sim``: one CPU;
- :func:`max_ongoing_requests`: the Serve bound of one replica, set just above the app's own limits, so a
  request past the replica's ``--max-queue`` reaches it and gets the server's 503 + ``Retry-After`` (and a
  stream past ``--max-streams`` its 1013) rather than waiting at the router.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .config import ServerConfig

__all__ = ["ScaleOut", "parse_autoscale", "parse_resources", "replica_resources", "max_ongoing_requests",
           "deployment_options", "missing_resources", "APP_NAME", "DEPLOYMENT_NAME", "REPLICA_HEADER",
           "NODE_HEADER", "CONTROL_SLACK"]

APP_NAME = "aiowhisper"
DEPLOYMENT_NAME = "WhisperServer"
#: Response headers naming the replica (its Serve replica ID, which is also its actor's name in the
#: ``serve`` namespace) and the Ray node it runs on.
REPLICA_HEADER = "X-Aiowhisper-Replica"
NODE_HEADER = "X-Aiowhisper-Node"
#: Requests a replica takes beyond its transcriptions and streams: ``/health``, ``/v1/models``, the page.
CONTROL_SLACK = 4


@dataclass(frozen=True)
class ScaleOut:
    """How the server is spread over a Ray cluster.

    Args:
        address: the Ray cluster (``auto``, ``ray://host:10001``, ``host:6379``); ``None``: ``$RAY_ADDRESS``
            when set, else a local Ray instance started for this process (and stopped with it).
        replicas: a fixed number of replicas (ignored when ``autoscale`` is set).
        autoscale: ``(min, max)`` replicas for Serve's autoscaler.
        target_ongoing: the autoscaler's target of requests in progress per replica.
        num_cpus: CPUs per replica (``None``: by backend, see :func:`replica_resources`).
        resources: custom Ray resources per replica (``None``: ``{"npu": 1}`` for ``xrt``, none otherwise;
            ``{"npu": 1}`` with ``sim`` places simulated NPU hosts like real ones).
        max_queued: requests Serve's router holds when every replica is at its ``max_ongoing_requests``;
            beyond it, 503 with ``Retry-After`` (``None``: the server's ``max_queue``).
        proxy_location: ``HeadOnly`` (one endpoint on the head node) or ``EveryNode``.
    """

    address: str | None = None
    replicas: int = 1
    autoscale: tuple[int, int] | None = None
    target_ongoing: float = 2.0
    num_cpus: float | None = None
    resources: dict[str, float] | None = None
    max_queued: int | None = None
    proxy_location: str = "HeadOnly"
    extra_actor_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if lo < 0 or hi < 1 or lo > hi:
                raise ValueError(f"autoscale needs 0 <= MIN <= MAX and MAX >= 1, got {lo}:{hi}")
        if self.target_ongoing <= 0:
            raise ValueError(f"target_ongoing must be > 0, got {self.target_ongoing}")
        if self.num_cpus is not None and self.num_cpus < 0:
            raise ValueError(f"num_cpus must be >= 0, got {self.num_cpus}")
        if self.max_queued is not None and self.max_queued < 1:
            raise ValueError(f"max_queued must be >= 1, got {self.max_queued}")
        if self.proxy_location not in ("HeadOnly", "EveryNode"):
            raise ValueError(f"proxy_location must be HeadOnly or EveryNode, got {self.proxy_location!r}")

    def describe(self) -> str:
        if self.autoscale is not None:
            return f"{self.autoscale[0]}-{self.autoscale[1]} replicas (autoscaled)"
        return f"{self.replicas} replica{'s' if self.replicas != 1 else ''}"


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"MIN:MAX"`` as two integers; :class:`ValueError` naming the expected form."""
    lo, sep, hi = text.partition(":")
    try:
        if not sep:
            raise ValueError
        bounds = int(lo), int(hi)
    except ValueError:
        raise ValueError(f"--autoscale takes MIN:MAX (two integers, e.g. 1:4), got {text!r}") from None
    ScaleOut(autoscale=bounds)  # the range checks
    return bounds


def parse_resources(text: str) -> dict[str, float]:
    """A JSON object of custom Ray resources (``'{"npu": 1}'``)."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                              and not isinstance(v, bool) and v >= 0 for k, v in value.items()):
        raise ValueError(f"--ray-resources takes a JSON object of names to amounts, e.g. '{{\"npu\": 1}}'; "
                         f"got {text!r}")
    return {k: float(v) for k, v in value.items()}


def replica_resources(config: ServerConfig, scale: ScaleOut) -> dict[str, Any]:
    """Serve's ``ray_actor_options`` for one replica: ``num_cpus`` and custom ``resources``."""
    if scale.num_cpus is not None:
        cpus = scale.num_cpus
    elif config.backend == "cpu":
        cpus = float(config.runtime_options.get("lanes") or 2)
    else:
        cpus = 1.0
    resources = scale.resources if scale.resources is not None else (
        {"npu": 1.0} if config.backend == "xrt" else {})
    options: dict[str, Any] = {"num_cpus": cpus, **scale.extra_actor_options}
    if resources:
        options["resources"] = dict(resources)
    return options


def missing_resources(cluster: dict[str, float], config: ServerConfig, scale: ScaleOut) -> str | None:
    """Why no replica could ever be placed on a cluster with these total resources (``ray.cluster_resources()``),
    or ``None``. Serve would otherwise wait for them forever."""
    wanted = replica_resources(config, scale)
    for name, amount in wanted.get("resources", {}).items():
        if cluster.get(name, 0.0) < amount:
            hint = f"ray start --resources '{{\"{name}\": 1}}'" if name == "npu" else f"--resources for '{name}'"
            return (f"no node of the Ray cluster advertises the resource '{name}' a replica needs "
                    f"({cluster.get(name, 0.0):g} of {amount:g}): start each NPU host with {hint}, or choose the "
                    f"replica resources with --ray-resources")
    if cluster.get("CPU", 0.0) < wanted["num_cpus"]:
        return (f"the Ray cluster has {cluster.get('CPU', 0.0):g} CPUs, a replica needs {wanted['num_cpus']:g} "
                f"(--ray-cpus)")
    return None


def max_ongoing_requests(config: ServerConfig) -> int:
    """Requests Serve lets into one replica at once: its transcriptions, its streams and a little slack."""
    return config.max_queue + config.max_streams + CONTROL_SLACK


def deployment_options(config: ServerConfig, scale: ScaleOut) -> dict[str, Any]:
    """Keywords of ``Deployment.options`` for the server's deployment (without Ray's config classes)."""
    options: dict[str, Any] = dict(
        name=DEPLOYMENT_NAME,
        ray_actor_options=replica_resources(config, scale),
        max_ongoing_requests=max_ongoing_requests(config),
        max_queued_requests=scale.max_queued if scale.max_queued is not None else config.max_queue,
        backpressure_config={"status_code": 503, "retry_after_s": 1.0},
        graceful_shutdown_timeout_s=config.shutdown_timeout_s,
        health_check_period_s=2.0,
        health_check_timeout_s=30.0,
    )
    if scale.autoscale is not None:
        lo, hi = scale.autoscale
        options["autoscaling_config"] = {"min_replicas": lo, "max_replicas": hi, "initial_replicas": max(lo, 1),
                                         "target_ongoing_requests": scale.target_ongoing}
    else:
        options["num_replicas"] = scale.replicas
    return options
