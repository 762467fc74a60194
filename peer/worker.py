"""`ComputeWorker`: the peer's one compute thread, with a trio face.

All torch work of a peer runs in a single dedicated thread, so the trio event loop never blocks
on a forward pass, and the backend (not thread-safe) sees one caller at a time. Jobs run in
submission order (FIFO). The thread lives exactly as long as `run`: it is started by
`await nursery.start(worker.run)` and stopped and joined when `run` is cancelled.

Theory of operation: `submit` puts a job on a `queue.SimpleQueue` and waits on a `trio.Event`;
the thread runs the job, captures its outcome, and sets the event through the trio token
(`run_sync_soon`). If the submitting task is cancelled while its job is queued, the job is
skipped; once it is running it completes (torch cannot be interrupted) and its result is
dropped. On shutdown, queued jobs are not run: their submitters get `WorkerClosedError`.
`max_pending` bounds the queue: further submitters wait (backpressure).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import outcome
import trio

from .errors import WorkerClosedError

__all__ = ["ComputeWorker", "Submitter"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Submitter(Protocol):
    """What the scheduler needs from a worker (tests substitute one that runs inline)."""

    async def submit(self, fn: Callable[..., T], *args: Any) -> T: ...


class _Job:
    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.done = trio.Event()
        self.result: outcome.Outcome[Any] | None = None
        self.abandoned = False


class ComputeWorker:
    """One thread that runs submitted callables one after another."""

    def __init__(self, *, name: str = "peer-compute", max_pending: int = 256) -> None:
        self._name = name
        self._slots = trio.Semaphore(max_pending)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self.jobs_done = 0

    @property
    def thread_id(self) -> int | None:
        """The compute thread's ident while running (for tests and diagnostics)."""
        return self._thread.ident if self._thread is not None else None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self._running:
            raise RuntimeError("ComputeWorker.run is already running")
        self._token = trio.lowlevel.current_trio_token()
        stopped = trio.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(stopped,), name=self._name, daemon=True
        )
        self._thread.start()
        self._running = True
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._running = False
            self._queue.put(None)
            with trio.CancelScope(shield=True):
                await stopped.wait()  # at most the job that is running now
            self._thread.join()
            self._thread = None

    def _loop(self, stopped: trio.Event) -> None:
        token = self._token
        if token is None:  # pragma: no cover - set before the thread starts
            return
        try:
            while (job := self._queue.get()) is not None:
                if job.abandoned or not self._running:  # cancelled, or shutting down
                    token.run_sync_soon(job.done.set)
                    continue
                job.result = outcome.capture(job.fn, *job.args)
                self.jobs_done += 1
                token.run_sync_soon(job.done.set)
        finally:
            # drain what is left so that no submitter waits forever
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    token.run_sync_soon(job.done.set)
            token.run_sync_soon(stopped.set)

    async def submit(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in the compute thread and return its result (or raise its error)."""
        async with self._slots:
            if not self._running:
                raise WorkerClosedError("the compute worker is not running")
            job = _Job(fn, args)
            self._queue.put(job)
            try:
                await job.done.wait()
            except BaseException:
                job.abandoned = True
                raise
        if job.result is None:
            raise WorkerClosedError("the compute worker stopped before running the job")
        result: T = job.result.unwrap()
        return result
