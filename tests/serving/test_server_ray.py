"""``aiowhisper-npu serve --ray`` on a two-node Ray cluster simulated on this machine (``ray.cluster_utils``):
each node advertises ``{"npu": 1}``, the backend is ``sim``, the model tiny.en.

The command itself deploys (a subprocess joining the cluster, as a user would run it); this process joins the
same cluster to look at the replicas and to ``ray.kill`` one. Covered: 16 concurrent ``openai`` requests
spread over both replicas on both nodes, a WebSocket stream through Serve, the server's 503 past a replica's
limit, a replica killed mid-load (502 for what it held, never a hang, no answer mixed up, service back
once Serve replaces it), a stream whose replica dies (close 1012), and a clean shutdown of the command and
of the cluster. Slow: the cluster and the two replicas take ~30 s to start on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the scale-out tests need Ray Serve (the ray extra, in the test extra)")
pytest.importorskip("ray.serve", reason="the scale-out tests need Ray Serve (pip install 'aiowhisper-npu[ray]')")
openai = pytest.importorskip("openai", reason="the server tests need the openai package (test extra)")
websockets = pytest.importorskip("websockets", reason="the stream tests need the websockets package")

from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from aiowhisper_npu.audio.io import load_audio  # noqa: E402
from aiowhisper_npu.server.scaleout import APP_NAME, NODE_HEADER, REPLICA_HEADER  # noqa: E402
from tests.support import CLIPS, DATA  # noqa: E402
from tests.support.server import ServerProcess, wait_until  # noqa: E402

pytestmark = pytest.mark.slow

MAX_QUEUE = 16  # per replica: 16 concurrent requests fit in either replica, so test 1 sees no 503
HANG_S = 180.0  # hang guards for a loaded machine, not timing assertions
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}
CLIP = "weather.wav"
PAD = 160  # samples of silence per request id (10 ms): ids up to ~60 keep the clip's words


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


class Deployment:
    """The cluster, the ``serve --ray`` process and the openai client."""

    def __init__(self, cluster: Cluster, server: ServerProcess):
        self.cluster = cluster
        self.server = server
        self.url = server.url
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=HANG_S)
        self.audio = load_audio(DATA / CLIP)

    def replicas(self) -> set[str]:
        """Names of the replica actors alive now (the values of the replica header)."""
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#")}

    def wav(self, request_id: int) -> bytes:
        """The clip followed by ``request_id`` x 10 ms of silence: the same words, and a duration that names
        the request (``verbose_json`` returns it), so an answer given to the wrong request shows."""
        import io

        import soundfile as sf

        buf = io.BytesIO()
        sf.write(buf, np.concatenate([self.audio, np.zeros(PAD * request_id, np.float32)]), 16000, format="WAV")
        return buf.getvalue()

    def duration(self, request_id: int) -> float:
        return (len(self.audio) + PAD * request_id) / 16000

    def transcribe(self, request_id: int) -> dict[str, Any]:
        """One request through the openai client: status, replica, node, and the parsed body (or error)."""
        try:
            raw = self.client.audio.transcriptions.with_raw_response.create(
                model="whisper-1", file=(f"r{request_id}.wav", self.wav(request_id)),
                response_format="verbose_json")
        except openai.APIStatusError as exc:
            return {"id": request_id, "status": exc.status_code, "retry_after": exc.response.headers.get("retry-after"),
                    "error": exc.response.json().get("error", {})}
        out = raw.parse()
        return {"id": request_id, "status": raw.status_code, "replica": raw.headers.get(REPLICA_HEADER),
                "node": raw.headers.get(NODE_HEADER), "text": out.text, "duration": out.duration}

    def transcribe_many(self, ids: range) -> list[dict[str, Any]]:
        with ThreadPoolExecutor(len(ids)) as pool:
            return list(pool.map(self.transcribe, ids))


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # inherited by the cluster's processes and the command
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"npu": 1}, "include_dashboard": False, "object_store_memory": 80 << 20})
    try:
        cluster.add_node(num_cpus=1, resources={"npu": 1}, object_store_memory=80 << 20)
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        args = ["--ray", "--ray-address", cluster.address, "--backend", "sim", "--replicas", "2",
                "--ray-resources", '{"npu": 1}', "--ray-cpus", "0.5", "--port", str(_free_port()),
                "--beam-size", "1", "--max-queue", str(MAX_QUEUE), "--shutdown-timeout", "20"]
        with ServerProcess(args, env=RAY_ENV) as server:
            yield Deployment(cluster, server)
    finally:
        try:
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()
        finally:
            cluster.shutdown()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _check_answer(r: dict[str, Any], d: Deployment) -> None:
    """A 200 whose words are the clip's and whose duration is its own request's."""
    assert r["status"] == 200, r
    assert _words(r["text"]) == _words(CLIPS[CLIP]), r
    assert r["duration"] == pytest.approx(d.duration(r["id"]), abs=1e-3), r


@pytest.mark.timeout(400)
def test_sixteen_concurrent_requests_spread_over_two_nodes(deployment: Deployment) -> None:
    d = deployment
    results = d.transcribe_many(range(16))
    for r in results:
        _check_answer(r, d)
    assert len({r["text"] for r in results}) == 1
    per_replica = Counter(r["replica"] for r in results)
    assert len(per_replica) == 2 and set(per_replica) == d.replicas(), per_replica
    nodes = {r["node"] for r in results}
    assert nodes == {n["NodeID"] for n in ray.nodes() if n["Alive"]} and len(nodes) == 2


@pytest.mark.timeout(300)
def test_stream_through_serve_gets_its_final_text(deployment: Deployment) -> None:
    d = deployment
    pcm = (np.clip(d.audio, -1, 1) * 32767).astype("<i2").tobytes()

    async def session() -> tuple[list[dict[str, Any]], int | None, str | None]:
        async with websockets.connect(d.server.ws_url + "/v1/stream", max_size=None) as ws:
            replica = ws.response.headers.get(REPLICA_HEADER)
            for i in range(0, len(pcm), 16000):
                await ws.send(pcm[i:i + 16000])
            await ws.send(json.dumps({"type": "end"}))
            messages = [json.loads(m) async for m in ws]
            return messages, ws.close_code, replica

    messages, code, replica = asyncio.run(asyncio.wait_for(session(), HANG_S))
    assert code == 1000 and messages[-1]["type"] == "final", messages[-2:]
    assert _words(messages[-1]["text"]) == _words(CLIPS[CLIP])
    assert replica in d.replicas()


@pytest.mark.timeout(300)
def test_past_the_replicas_limits_the_server_answers_503(deployment: Deployment) -> None:
    """Uploads that send their headers and then stall hold their replica's places (as on one server). Once
    every replica's ``--max-queue`` places are held, the next request gets the server's own 503 with
    Retry-After (an upload that reached a full replica while the other had room gets the same), not a
    queue."""
    d = deployment
    host, port = d.url.split("//")[1].split(":")
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n--xyz\r\n").encode()
    held: list[socket.socket] = []
    refused: list[bytes] = []
    try:
        deadline = time.monotonic() + HANG_S
        while len(held) < 2 * MAX_QUEUE and time.monotonic() < deadline:
            for _ in range(2 * MAX_QUEUE - len(held)):
                s = socket.create_connection((host, int(port)), timeout=HANG_S)
                s.sendall(head)
                held.append(s)
            time.sleep(2.0)  # a refused upload is answered at once; the others wait for their bodies
            ready, _, _ = select.select(held, [], [], 0)
            for s in ready:
                refused.append(s.recv(65536))
                held.remove(s)
                s.close()
        assert len(held) == 2 * MAX_QUEUE
        for answer in refused:
            assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: " in answer.lower(), answer[:300]
        r = d.transcribe(38)
        assert r["status"] == 503 and r["error"]["code"] == "queue_full" and int(r["retry_after"]) >= 1, r
    finally:
        for s in held:
            s.close()
    assert wait_until(lambda: d.transcribe(37)["status"] == 200, timeout=HANG_S, step=1.0)  # places freed


@pytest.mark.timeout(400)
def test_a_replica_killed_mid_load_fails_its_requests_and_service_recovers(deployment: Deployment) -> None:
    d = deployment
    before = d.replicas()
    victim = sorted(before)[0]
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(d.transcribe, i) for i in range(16, 28)]
        time.sleep(1.0)  # every replica holds several requests by now (each takes ~1 s of the 2 cores)
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        results = [f.result(timeout=HANG_S) for f in futures]  # a hang fails here
    failed = [r for r in results if r["status"] != 200]
    assert failed, "the kill hit no request in flight"
    for r in failed:  # the requests the dead replica held
        assert r["status"] == 502 and r["error"]["code"] == "replica_lost" and r["retry_after"] == "1", r
    for r in results:
        if r["status"] == 200:
            _check_answer(r, d)
    # Serve replaces the replica; then requests succeed again, on both replicas
    assert wait_until(lambda: len(d.replicas() - before) == 1 and victim not in d.replicas()
                      and serve.status().applications[APP_NAME].status == "RUNNING", timeout=HANG_S, step=0.5)
    after = d.transcribe_many(range(28, 36))
    for r in after:
        _check_answer(r, d)
    assert {r["replica"] for r in after} <= d.replicas()


@pytest.mark.timeout(300)
def test_a_stream_whose_replica_dies_is_closed_with_1012(deployment: Deployment) -> None:
    d = deployment
    pcm = (np.clip(d.audio, -1, 1) * 32767).astype("<i2").tobytes()

    async def session() -> tuple[int | None, str]:
        async with websockets.connect(d.server.ws_url + "/v1/stream", max_size=None) as ws:
            replica = ws.response.headers[REPLICA_HEADER]
            await ws.send(pcm[:32000])
            await asyncio.sleep(0.5)
            ray.kill(ray.get_actor(replica, namespace="serve"), no_restart=True)
            try:
                async for _ in ws:
                    pass
            except websockets.ConnectionClosed:
                pass
            return ws.close_code, replica

    code, replica = asyncio.run(asyncio.wait_for(session(), HANG_S))
    assert code == 1012
    assert wait_until(lambda: replica not in d.replicas() and len(d.replicas()) == 2
                      and serve.status().applications[APP_NAME].status == "RUNNING", timeout=HANG_S, step=0.5)
    _check_answer(d.transcribe(36), d)


@pytest.mark.timeout(300)
def test_the_command_and_the_cluster_shut_down_cleanly(deployment: Deployment) -> None:
    d = deployment
    d.server.terminate()
    assert d.server.wait(120) == 0, d.server.log
    assert "stopping" in d.server.log
    assert APP_NAME not in serve.status().applications
    assert wait_until(lambda: not d.replicas(), timeout=60)
    processes = [p.process for node in [d.cluster.head_node, *d.cluster.worker_nodes]
                 for infos in node.all_processes.values() for p in infos]
    serve.shutdown()
    ray.shutdown()
    d.cluster.shutdown()
    assert processes and all(p.poll() is not None for p in processes)
