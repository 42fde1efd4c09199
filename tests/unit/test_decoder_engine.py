"""The batching decoder engine: results independent of batching, round-robin progress, bounded admission,
failures and cancellation that release every cache, on asyncio, uvloop and trio."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import numpy as np
import pytest

import aiowhisper_npu as aw
from aiowhisper_npu.decoder import kernels as dk
from aiowhisper_npu.decoder.cache import KVCache
from aiowhisper_npu.decoder.engine import DecoderEngine, TaskCancelled
from aiowhisper_npu.runtime.recognizer import run_task
from tests.support.loops import all_loops, all_loops_fast_on_asyncio


class Greedy:
    """A test task: argmax decoding for ``steps`` tokens (no logit rules), recording its progress."""

    def __init__(self, dec: dk.PreparedDecoder, cross: Any, prompt: list[int], steps: int, log: list[str] | None = None,
                 name: str = "", fail_at: int = -1):
        d = dec.dims
        self.cache = KVCache(cross, d.n_text_layer, d.n_text_head, d.text_head_dim, d.n_text_ctx)
        self.prompt, self.steps, self.tokens = prompt, steps, []
        self.log, self.name, self.fail_at = log, name, fail_at
        self.closed = 0
        self.rows = 1

    def next_pass(self) -> dk.Pass | None:
        if len(self.tokens) == self.steps:
            return None
        if not self.tokens:
            return dk.Pass(self.cache, np.array([self.prompt]))
        return dk.Pass(self.cache, np.array([[self.tokens[-1]]]))

    def feed(self, out: dk.PassOutput) -> None:
        if len(self.tokens) == self.fail_at:
            raise ValueError(f"{self.name} fails on purpose")
        self.tokens.append(int(np.argmax(out.logits[0, -1])))
        if self.log is not None:
            self.log.append(self.name)

    def result(self) -> list[int]:
        return list(self.tokens)

    def close(self) -> None:
        self.closed += 1
        self.cache.release()


@pytest.fixture(scope="module")
def setup(tiny: aw.WhisperModel) -> tuple[dk.PreparedDecoder, list[Any]]:
    dec = dk.prepare_decoder(tiny.decoder, tiny.dims)
    rng = np.random.default_rng(0)
    crosses = [dk.cross_cache(dec, rng.standard_normal((1500, 384)).astype(np.float32) * 0.5) for _ in range(3)]
    return dec, crosses


PROMPTS = [[50257, 50362], [50257, 50363], [50257, 50362, 383]]


def _alone(dec: dk.PreparedDecoder, crosses: list[Any], i: int, steps: int) -> list[int]:
    t = Greedy(dec, crosses[i % 3], PROMPTS[i % 3], steps)
    while (p := t.next_pass()) is not None:
        t.feed(dk.forward(dec, [p])[0])
    return t.result()


@pytest.mark.anyio
@all_loops_fast_on_asyncio
@pytest.mark.parametrize("threads", [1, 2])
async def test_concurrent_tasks_get_their_own_results(setup: Any, threads: int) -> None:
    """Batched, and with the large products split over two threads, every task gets exactly its result alone."""
    dec, crosses = setup
    engine = DecoderEngine(dec, threads=threads)
    engine.start()
    try:
        results: dict[int, list[int]] = {}

        async def one(i: int) -> None:
            results[i] = await run_task(engine, Greedy(dec, crosses[i % 3], PROMPTS[i % 3], 6 + i))

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(one, i)
        st = engine.stats()
        assert st.completed == 6 and st.active_tasks == 0 and st.waiting_tasks == 0
        assert st.passes > st.iterations  # passes really were batched together
    finally:
        engine.stop()
    for i in range(6):
        assert results[i] == _alone(dec, crosses, i, 6 + i)


def test_round_robin_progress_and_admission_bounds(setup: Any) -> None:
    """Every active task advances once per iteration (a long task cannot starve a short one), and no more
    than max_tasks are active: the third task starts only when one of the first two is done."""
    dec, crosses = setup
    engine = DecoderEngine(dec, max_tasks=2)
    log: list[str] = []
    tasks = [Greedy(dec, crosses[0], PROMPTS[0], 12, log, "long"), Greedy(dec, crosses[1], PROMPTS[1], 3, log, "short"),
             Greedy(dec, crosses[2], PROMPTS[2], 3, log, "late")]
    finished = threading.Event()
    order: list[str] = []

    def done(name: str) -> Any:
        def cb(result: Any, error: BaseException | None) -> None:
            order.append(name)
            if len(order) == 3:
                finished.set()
        return cb

    engine.start()
    try:
        with engine._cond:  # the engine cannot admit anything until all three are queued
            for t in tasks:
                engine.submit(t, done(t.name))
        assert finished.wait(60)
    finally:
        engine.stop()
    assert order == ["short", "late", "long"]
    assert log[:6] == ["long", "short"] * 3  # interleaved, one step each per iteration
    last_short = len(log) - 1 - log[::-1].index("short")
    assert log.index("late") > last_short  # admitted only once a slot was free
    assert all(t.closed == 1 for t in tasks)


def test_a_failing_task_fails_alone(setup: Any) -> None:
    dec, crosses = setup
    engine = DecoderEngine(dec)
    engine.start()
    outcome: dict[str, Any] = {}
    both = threading.Event()

    def cb(name: str) -> Any:
        def done(result: Any, error: BaseException | None) -> None:
            outcome[name] = error or result
            if len(outcome) == 2:
                both.set()
        return done

    try:
        bad = Greedy(dec, crosses[0], PROMPTS[0], 8, name="bad", fail_at=3)
        good = Greedy(dec, crosses[1], PROMPTS[1], 8, name="good")
        engine.submit(bad, cb("bad"))
        engine.submit(good, cb("good"))
        assert both.wait(60)
        assert isinstance(outcome["bad"], ValueError) and "on purpose" in str(outcome["bad"])
        assert outcome["good"] == _alone(dec, crosses, 1, 8)
        assert bad.closed == 1 and good.closed == 1 and engine.stats().failed == 1
    finally:
        engine.stop()


@pytest.mark.anyio
@all_loops
async def test_cancelled_call_releases_its_task(setup: Any) -> None:
    """Cancelling run_task returns only after the engine closed the task; the others finish normally."""
    dec, crosses = setup
    engine = DecoderEngine(dec)
    engine.start()
    try:
        victim = Greedy(dec, crosses[0], PROMPTS[0], 400)
        other = Greedy(dec, crosses[1], PROMPTS[1], 10)
        got: list[Any] = []
        async with anyio.create_task_group() as tg:
            async def cancel_soon(scope: anyio.CancelScope) -> None:
                while len(victim.tokens) < 3:
                    await anyio.sleep(0.005)
                scope.cancel()

            async def victim_call() -> None:
                with anyio.CancelScope() as scope:
                    tg.start_soon(cancel_soon, scope)
                    await run_task(engine, victim)
                got.append("cancelled")
                assert victim.closed == 1 and victim.cache.released and victim.cache.nbytes == 0  # before we got here

            async def other_call() -> None:
                got.append(await run_task(engine, other))

            tg.start_soon(victim_call)
            tg.start_soon(other_call)
        assert "cancelled" in got and _alone(dec, crosses, 1, 10) in got
        assert 3 <= len(victim.tokens) < 400
        st = engine.stats()
        assert st.active_tasks == 0 and st.cancelled == 1 and st.completed == 1
    finally:
        engine.stop()


def test_stop_cancels_everything_and_joins(setup: Any) -> None:
    dec, crosses = setup
    engine = DecoderEngine(dec)
    engine.start()
    errors: list[BaseException | None] = []
    tasks = [Greedy(dec, crosses[i], PROMPTS[i], 400) for i in range(3)]
    for t in tasks:
        engine.submit(t, lambda r, e: errors.append(e))
    engine.stop()
    assert len(errors) == 3 and all(isinstance(e, TaskCancelled) for e in errors)
    assert all(t.closed == 1 and t.cache.nbytes == 0 for t in tasks)
    assert not any(th.name.startswith("aiowhisper-decoder") for th in threading.enumerate())
    with pytest.raises(RuntimeError, match="not running"):
        engine.submit(tasks[0], lambda r, e: None)
    engine.stop()  # idempotent
