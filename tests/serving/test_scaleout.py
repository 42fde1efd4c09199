"""``serve --ray`` without a cluster: replica sizing and limits (:mod:`aiowhisper_npu.server.scaleout`), the
command's checks and its message when Ray is missing, and the ASGI pieces (replica headers, and the proxy
guard's answers for a replica lost mid-request) driven by hand. The deployment itself: test_server_ray.py."""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio
import pytest

pytest.importorskip("fastapi", reason="the server needs the server extra (fastapi, uvicorn)")

from aiowhisper_npu.cli import main
from aiowhisper_npu.server import ServerConfig
from aiowhisper_npu.server.scaleout import (
    CONTROL_SLACK,
    ScaleOut,
    deployment_options,
    missing_resources,
    parse_autoscale,
    parse_resources,
    replica_resources,
)


def test_replica_resources_follow_the_backend() -> None:
    assert replica_resources(ServerConfig(backend="xrt"), ScaleOut()) == {"num_cpus": 1.0, "resources": {"npu": 1.0}}
    assert replica_resources(ServerConfig(backend="sim"), ScaleOut()) == {"num_cpus": 1.0}
    assert replica_resources(ServerConfig(backend="cpu"), ScaleOut()) == {"num_cpus": 2.0}
    assert replica_resources(ServerConfig(backend="cpu", runtime_options={"lanes": 4}), ScaleOut()) == {"num_cpus": 4.0}
    simulated_npu_host = ScaleOut(num_cpus=0.5, resources={"npu": 1})
    assert replica_resources(ServerConfig(backend="sim"), simulated_npu_host) == {
        "num_cpus": 0.5, "resources": {"npu": 1}}


def test_deployment_options_bound_each_replica_just_above_the_apps_limits() -> None:
    config = ServerConfig(backend="sim", max_queue=5, max_streams=3)
    fixed = deployment_options(config, ScaleOut(replicas=3))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 5 + 3 + CONTROL_SLACK
    assert fixed["max_queued_requests"] == 5  # the router's queue is bounded too
    assert fixed["backpressure_config"] == {"status_code": 503, "retry_after_s": 1.0}
    scaled = deployment_options(config, ScaleOut(autoscale=(0, 4), target_ongoing=3, max_queued=9))
    assert "num_replicas" not in scaled and scaled["max_queued_requests"] == 9
    assert scaled["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 4, "initial_replicas": 1,
                                            "target_ongoing_requests": 3}


def test_a_cluster_without_the_replicas_resources_is_refused_not_waited_for() -> None:
    xrt, sim = ServerConfig(backend="xrt"), ServerConfig(backend="sim")
    assert missing_resources({"CPU": 8.0, "npu": 2.0}, xrt, ScaleOut()) is None
    problem = missing_resources({"CPU": 8.0}, xrt, ScaleOut())
    assert problem is not None and "ray start --resources '{\"npu\": 1}'" in problem
    assert missing_resources({"CPU": 8.0}, sim, ScaleOut()) is None
    assert "--ray-cpus" in (missing_resources({"CPU": 0.5}, sim, ScaleOut()) or "")


@pytest.mark.parametrize("text", ["3", "a:b", "3:1", "0:0", "-1:2", ""])
def test_bad_autoscale_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="MIN"):
        parse_autoscale(text)


def test_autoscale_and_resources_parse() -> None:
    assert parse_autoscale("1:4") == (1, 4) and parse_autoscale("0:2") == (0, 2)
    assert parse_resources('{"npu": 1}') == {"npu": 1.0}
    for bad in ("npu=1", "[1]", '{"npu": "one"}', '{"npu": -1}', '{"npu": true}'):
        with pytest.raises(ValueError, match="JSON object"):
            parse_resources(bad)


def test_ray_flags_need_ray_and_a_fixed_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--replicas", "2"]) == 2
    assert "need --ray" in capsys.readouterr().err
    assert main(["serve", "--ray", "--port", "0"]) == 2
    assert "--port 0 is not supported" in capsys.readouterr().err
    assert main(["serve", "--ray", "--autoscale", "4:2"]) == 2
    assert "MIN <= MAX" in capsys.readouterr().err


def test_without_ray_the_command_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("ray", "ray.serve", "aiowhisper_npu.server.ray_app"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it raises ImportError, as when not installed
    assert main(["serve", "--ray", "--port", "8123"]) == 2
    assert "pip install 'aiowhisper-npu[ray]'" in capsys.readouterr().err


# -- the ASGI pieces (they import Ray Serve) ---------------------------------------------------------------------

async def _drive(app: Any, scope: dict[str, Any], incoming: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def _ray_routing() -> Any:
    pytest.importorskip("ray.serve", reason="needs Ray Serve (the ray extra, in the test extra)")
    from aiowhisper_npu.server import ray_routing

    return ray_routing


@pytest.mark.parametrize("kind", ["returns", "raises"])
def test_an_http_request_whose_replica_ended_without_an_answer_gets_502(kind: str) -> None:
    guard = _ray_routing().ReplicaLossGuard
    sent: list[dict[str, Any]] = []

    async def lost(scope: Any, receive: Any, send: Any) -> None:  # Serve's proxy after the replica died
        if kind == "raises":
            raise RuntimeError("actor died")

    async def run() -> None:
        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.disconnect"}

        try:
            await guard(lost)({"type": "http"}, receive, send)
        except RuntimeError:
            assert kind == "raises"  # still raised for the proxy's own logging

    anyio.run(run)
    start, body = sent
    assert start["status"] == 502 and (b"retry-after", b"1") in start["headers"]
    assert json.loads(body["body"])["error"]["code"] == "replica_lost"


def test_an_answered_request_is_left_alone() -> None:
    guard = _ray_routing().ReplicaLossGuard

    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    sent = anyio.run(_drive, guard(ok), {"type": "http"}, [])
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"] and sent[0]["status"] == 200


@pytest.mark.parametrize("from_replica", [False, True])
def test_serves_own_503_gets_the_servers_error_shape(from_replica: bool) -> None:
    guard = _ray_routing().ReplicaLossGuard
    marker = [(b"x-aiowhisper-replica", b"r1")] if from_replica else []

    async def busy(scope: Any, receive: Any, send: Any) -> None:  # Serve's backpressure answer, or the app's
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"text/plain"), (b"retry-after", b"1"), *marker]})
        await send({"type": "http.response.body", "body": b"Request dropped due to backpressure", "more_body": True})
        await send({"type": "http.response.body", "body": b" (queue full)."})

    sent = anyio.run(_drive, guard(busy), {"type": "http"}, [])
    if from_replica:
        assert len(sent) == 3 and sent[1]["body"].startswith(b"Request dropped")  # untouched
        return
    start, body = sent
    assert start["status"] == 503 and (b"retry-after", b"1") in start["headers"]
    assert (b"content-type", b"application/json") in start["headers"]
    error = json.loads(body["body"])["error"]
    assert error["code"] == "service_unavailable" and error["message"].endswith("backpressure (queue full).")


@pytest.mark.parametrize("closes", [False, True])
def test_a_stream_whose_replica_ended_is_closed_with_1012(closes: bool) -> None:
    routing = _ray_routing()

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        if closes:
            await send({"type": "websocket.close", "code": 1000})

    sent = anyio.run(_drive, routing.ReplicaLossGuard(stream), {"type": "websocket"}, [])
    closes_sent = [m for m in sent if m["type"] == "websocket.close"]
    assert [m["code"] for m in closes_sent] == ([1000] if closes else [routing.CLOSE_SERVICE_RESTART])


def test_replica_headers_on_responses_and_handshakes() -> None:
    pytest.importorskip("ray.serve", reason="needs Ray Serve (the ray extra, in the test extra)")
    from aiowhisper_npu.server.ray_app import ReplicaHeaders

    async def app(scope: Any, receive: Any, send: Any) -> None:
        kind = "http.response.start" if scope["type"] == "http" else "websocket.accept"
        await send({"type": kind, "status": 200, "headers": [(b"a", b"1")]})

    headers = {"X-Aiowhisper-Replica": "r1", "X-Aiowhisper-Node": "n1"}
    for scope_type in ("http", "websocket"):
        (message,) = anyio.run(_drive, ReplicaHeaders(app, headers=headers), {"type": scope_type}, [])
        assert message["headers"] == [(b"a", b"1"), (b"x-aiowhisper-replica", b"r1"), (b"x-aiowhisper-node", b"n1")]
