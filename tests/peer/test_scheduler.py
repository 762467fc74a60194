"""InferenceScheduler: concurrent single-token steps merged into one job, per-request errors,
idle sessions expired on the trio clock."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import torch
import trio

from peer.backend import BackendConfig, SpanBackend
from peer.errors import InvalidRequestError, SessionNotFoundError, WorkerClosedError
from peer.scheduler import InferenceScheduler, SchedulerConfig, _timed
from peer.worker import ComputeWorker

T = TypeVar("T")


@asynccontextmanager
async def serving(
    backend: SpanBackend, config: SchedulerConfig | None = None
) -> AsyncIterator[tuple[InferenceScheduler, ComputeWorker]]:
    worker = ComputeWorker()
    scheduler = InferenceScheduler(backend, worker, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await nursery.start(scheduler.run)
        yield scheduler, worker
        nursery.cancel_scope.cancel()


class InlineWorker:
    """Runs jobs in the trio thread. With the autojump clock a real thread would let virtual
    time jump while torch computes; inline, time stands still during compute, as in reality
    (compute takes milliseconds, timeouts are minutes)."""

    async def submit(self, fn: Callable[..., T], *args: Any) -> T:
        await trio.lowlevel.checkpoint()
        return fn(*args)


def _hidden(length: int = 1, seed: int = 0, width: int = 64) -> torch.Tensor:
    return torch.randn(1, length, width, generator=torch.Generator().manual_seed(seed))


async def test_concurrent_steps_are_merged(checkpoints: dict[str, Path]) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 4)
    reference = SpanBackend.load(checkpoints["llama"], 0, 4)
    sessions = [f"s{i}" for i in range(5)]
    async with serving(backend) as (scheduler, worker):
        for i, session_id in enumerate(sessions):
            await scheduler.open_session(session_id, 16)
            reference.open_session(session_id, 16)
            prompt = _hidden(length=i + 1, seed=i)  # different lengths
            assert not (await scheduler.step_timed(session_id, prompt)).merged
            reference.step(session_id, prompt)
        assert scheduler.batches_run == 0  # prompts run alone
        gate = threading.Event()
        results: dict[str, torch.Tensor] = {}

        async def one_step(session_id: str, seed: int) -> None:
            done = await scheduler.step_timed(session_id, _hidden(seed=seed))
            assert done.merged
            results[session_id] = done.output

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.submit, gate.wait, 30.0)  # keep the worker busy
            await trio.testing.wait_all_tasks_blocked()
            for i, session_id in enumerate(sessions):
                nursery.start_soon(one_step, session_id, 10 + i)
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert (scheduler.batches_run, scheduler.steps_batched) == (1, 5)
        for i, session_id in enumerate(sessions):
            expected = reference.step(session_id, _hidden(seed=10 + i))
            torch.testing.assert_close(results[session_id], expected, rtol=0, atol=1e-5)


async def test_bad_request_in_a_batch_gets_its_own_error(checkpoints: dict[str, Path]) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 2)
    async with serving(backend) as (scheduler, worker):
        for session_id in ("a", "b", "c"):
            await scheduler.open_session(session_id, 4)
        gate = threading.Event()
        outcomes: dict[str, object] = {}

        async def one_step(session_id: str, hidden: torch.Tensor) -> None:
            try:
                outcomes[session_id] = (await scheduler.step(session_id, hidden)).shape
            except InvalidRequestError as error:
                outcomes[session_id] = error

        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.submit, gate.wait, 30.0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(one_step, "a", _hidden())
            nursery.start_soon(one_step, "b", _hidden().double())
            nursery.start_soon(one_step, "c", _hidden())
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
        assert outcomes["a"] == outcomes["c"] == (1, 1, 64)
        assert isinstance(outcomes["b"], InvalidRequestError)
        assert scheduler.batches_run == 0
        assert [backend.session_length(s) for s in "abc"] == [1, 0, 1]


async def test_batching_can_be_disabled(checkpoints: dict[str, Path]) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 1)
    async with serving(backend, SchedulerConfig(batching=False)) as (scheduler, _):
        await scheduler.open_session("a", 4)
        await scheduler.open_session("b", 4)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.step, "a", _hidden())
            nursery.start_soon(scheduler.step, "b", _hidden())
        assert scheduler.batches_run == 0
        assert backend.session_length("a") == backend.session_length("b") == 1
        forward, kept = await scheduler.forward(_hidden(length=3))
        assert torch.equal(forward, backend.forward(_hidden(length=3))) and kept is None


async def test_idle_sessions_expire(
    checkpoints: dict[str, Path], autojump_clock: trio.testing.MockClock
) -> None:
    config = BackendConfig(max_cache_tokens=64)
    backend = SpanBackend.load(checkpoints["llama"], 0, 1, config=config)
    scheduler = InferenceScheduler(backend, InlineWorker(), SchedulerConfig(idle_timeout=60.0))
    async with trio.open_nursery() as serving_nursery:
        await serving_nursery.start(scheduler.run)
        await scheduler.open_session("idle", 32)
        await scheduler.open_session("busy", 32)
        assert backend.cache_tokens_left == 0

        async def keep_alive() -> None:
            for _ in range(6):
                await trio.sleep(25)
                await scheduler.step("busy", _hidden())

        began = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_alive)
            await trio.sleep(59)
            assert backend.session_ids() == ["idle", "busy"]
            await trio.sleep(2)
            assert backend.session_ids() == ["busy"]  # expired at 60 s, not before
            assert backend.cache_tokens_left == 32
        assert trio.current_time() - began >= 150
        assert backend.session_ids() == ["busy"]  # stepped every 25 s: still open
        with pytest.raises(SessionNotFoundError):
            await scheduler.step("idle", _hidden())
        await trio.sleep(61)
        assert backend.session_ids() == [] and scheduler.sessions_expired == 2
        assert await scheduler.close_session("busy") is False
        assert backend.cache_tokens_left == 64
        serving_nursery.cancel_scope.cancel()


async def test_waiting_steps_fail_when_the_scheduler_stops(checkpoints: dict[str, Path]) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 1)
    backend.open_session("a", 4)
    backend.open_session("b", 4)  # with one session only, steps skip the batch queue
    worker = ComputeWorker()
    scheduler = InferenceScheduler(backend, worker)
    errors: list[Exception] = []

    async def one_step() -> None:
        try:
            await scheduler.step("a", _hidden())
        except WorkerClosedError as error:
            errors.append(error)

    async with trio.open_nursery() as outer:
        await outer.start(worker.run)
        async with trio.open_nursery() as inner:
            await inner.start(scheduler.run)
            gate = threading.Event()
            outer.start_soon(worker.submit, gate.wait, 30.0)
            await trio.testing.wait_all_tasks_blocked()
            outer.start_soon(one_step)  # queued: the batch loop waits for the worker
            outer.start_soon(one_step)
            await trio.testing.wait_all_tasks_blocked()
            inner.cancel_scope.cancel()
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        outer.cancel_scope.cancel()
    assert len(errors) == 2


class ClockWorker:
    """Runs jobs in the trio thread, each taking `seconds` of the trio clock, reported as
    their compute time: with the autojump clock, a peer whose every step takes 10 ms."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def submit(self, fn: Callable[..., T], *args: Any) -> T:
        await trio.sleep(self.seconds)
        if fn is _timed:
            return cast(T, (args[0](*args[1:]), self.seconds))
        return fn(*args)


async def _generate(scheduler: InferenceScheduler, session_id: str, away: float) -> None:
    """Six one-token steps, each `away` seconds after the last one's result (the rest of the
    chain and the client)."""
    for step in range(6):
        await scheduler.step(session_id, _hidden(seed=step))
        await trio.sleep(away)


@pytest.mark.parametrize("gathering", [True, False])
async def test_sessions_generating_at_once_come_to_step_together(
    checkpoints: dict[str, Path], autojump_clock: trio.testing.MockClock, gathering: bool
) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 1)
    reference = SpanBackend.load(checkpoints["llama"], 0, 1)
    config = SchedulerConfig(gathering=gathering)
    scheduler = InferenceScheduler(backend, ClockWorker(0.01), config)
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        for session_id in "ab":
            await scheduler.open_session(session_id, 8)
            reference.open_session(session_id, 8)

        async def late_start() -> None:
            await trio.sleep(0.004)  # b steps 4 ms after a: a's step still computes
            await _generate(scheduler, "b", 0.1)

        async with trio.open_nursery() as generations:
            generations.start_soon(_generate, scheduler, "a", 0.1)
            generations.start_soon(late_start)
        nursery.cancel_scope.cancel()
    # gathering: from the third step (once b's absence is known) a waits for b and they
    # step together; without, each step of b waits for a's to finish, and they never meet
    assert (scheduler.batches_run, scheduler.steps_batched) == ((4, 8) if gathering else (0, 0))
    for session_id in "ab":
        for step in range(6):
            reference.step(session_id, _hidden(seed=step))
        assert backend.session_length(session_id) == 6
    probe = _hidden(seed=9)
    for session_id in "ab":
        expected = reference.step(session_id, probe)
        torch.testing.assert_close(backend.step(session_id, probe), expected, rtol=0, atol=1e-5)


async def test_a_generation_does_not_wait_for_an_idle_session(
    checkpoints: dict[str, Path], autojump_clock: trio.testing.MockClock
) -> None:
    backend = SpanBackend.load(checkpoints["llama"], 0, 1)
    scheduler = InferenceScheduler(backend, ClockWorker(0.01))
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.run)
        for session_id in "ab":
            await scheduler.open_session(session_id, 8)
        for step in range(2):  # b had a cadence, then idles (its conversation's turn ended)
            await scheduler.step("b", _hidden(seed=step))
            await trio.sleep(0.1)
        await trio.sleep(1.0)
        began = trio.current_time()
        await _generate(scheduler, "a", 0.1)
        assert trio.current_time() - began == pytest.approx(6 * 0.11)  # no step waited
        nursery.cancel_scope.cancel()
    assert scheduler.batches_run == 0
