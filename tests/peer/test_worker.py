"""ComputeWorker: one thread, FIFO, the event loop keeps running, clean cancellation and stop."""

from __future__ import annotations

import threading

import pytest
import trio

from peer.errors import InvalidRequestError, WorkerClosedError
from peer.worker import ComputeWorker


async def test_jobs_run_in_one_thread_in_order() -> None:
    worker = ComputeWorker()
    seen: list[tuple[int, int]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)

        def job(index: int) -> int:
            seen.append((index, threading.get_ident()))
            return index * 2

        results = [await worker.submit(job, i) for i in range(3)]
        results_concurrent: list[int] = []

        async def submit(i: int) -> None:
            results_concurrent.append(await worker.submit(job, i))

        async with trio.open_nursery() as inner:
            for i in range(3, 8):
                inner.start_soon(submit, i)
        assert results == [0, 2, 4] and sorted(results_concurrent) == [6, 8, 10, 12, 14]
        threads = {ident for _, ident in seen}
        assert threads == {worker.thread_id} and threading.get_ident() not in threads
        nursery.cancel_scope.cancel()
    assert worker.thread_id is None


async def test_event_loop_runs_while_a_job_blocks() -> None:
    """The job waits for something only the trio loop can do: a blocked loop would deadlock."""
    worker = ComputeWorker()
    gate = threading.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)

        async def open_gate() -> None:
            for _ in range(10):
                await trio.lowlevel.checkpoint()
            gate.set()

        nursery.start_soon(open_gate)
        assert await worker.submit(gate.wait, 30.0) is True
        nursery.cancel_scope.cancel()


async def test_errors_propagate_and_worker_continues() -> None:
    worker = ComputeWorker()
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)

        def fail() -> None:
            raise InvalidRequestError("bad")

        with pytest.raises(InvalidRequestError, match="bad"):
            await worker.submit(fail)
        assert await worker.submit(len, "abc") == 3
        nursery.cancel_scope.cancel()


async def test_cancelled_queued_job_is_skipped() -> None:
    worker = ComputeWorker()
    gate = threading.Event()
    ran: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        blocker_done = trio.Event()

        async def blocker() -> None:
            await worker.submit(gate.wait, 30.0)
            blocker_done.set()

        nursery.start_soon(blocker)
        await trio.testing.wait_all_tasks_blocked()

        async def cancelled_submit(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                await worker.submit(ran.append, "skipped")

        scope = await nursery.start(cancelled_submit)
        await trio.testing.wait_all_tasks_blocked()  # queued behind the blocker
        scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        await blocker_done.wait()
        await worker.submit(ran.append, "ran")
        assert ran == ["ran"]
        nursery.cancel_scope.cancel()


async def test_submit_when_not_running() -> None:
    worker = ComputeWorker()
    with pytest.raises(WorkerClosedError):
        await worker.submit(len, "x")
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with pytest.raises(RuntimeError, match="already running"):
            await worker.run()
        nursery.cancel_scope.cancel()
    with pytest.raises(WorkerClosedError):
        await worker.submit(len, "x")
