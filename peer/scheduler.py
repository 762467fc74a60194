"""`InferenceScheduler`: the trio-facing API over a `SpanBackend`, for the RPC handlers.

It adds three things to the backend, and no compute of its own:
- every call runs in the `ComputeWorker` thread (the event loop never blocks on torch);
- batching: single-token steps that arrive while the worker is busy, within the same
  scheduling tick, or while the peer waits for the steps of other sessions expected back
  within a merge's worth of time (`StepGathering`: sessions generating at once come to step
  together), are handed to `SpanBackend.step_many` as one job. Otherwise a step is not
  delayed (one generation alone never waits). If a merged batch holds an invalid request,
  the batch is retried one step at a time, so each caller gets its own result or its own
  typed error;
- idle expiry: a session with no step for `idle_timeout` seconds (trio clock, so tests use the
  autojump clock) is closed and its cache tokens return to the budget. A session with a step
  in flight never expires.

The caller of `step` must not send the next step of a session before the previous one
answered (the RPC stream does this naturally).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import outcome
import torch
import trio

from .backend import SessionInfo, SpanBackend, StepRequest
from .errors import PeerError, SessionNotFoundError, WorkerClosedError
from .step_gathering import StepGathering
from .worker import Submitter

__all__ = ["InferenceScheduler", "SchedulerConfig", "StepDone"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    """`fn(*args)` and the seconds it took (in the worker thread: the compute alone)."""
    began = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - began


@dataclass(frozen=True)
class SchedulerConfig:
    idle_timeout: float = 300.0  # seconds without a step before a session is closed
    batching: bool = True
    gathering: bool = True  # wait for the steps of sessions expected back (`StepGathering`)
    max_batch: int = 64  # steps per step_many job


@dataclass(frozen=True)
class StepDone:
    """A step's output, the seconds the compute thread spent on it (on its whole batch, if
    merged) and whether it ran in one forward with other sessions' steps."""

    output: torch.Tensor
    compute_seconds: float
    merged: bool = False


class _Pending:
    def __init__(self, request: StepRequest) -> None:
        self.request = request
        self.done = trio.Event()
        self.result: outcome.Outcome[torch.Tensor] | None = None
        self.compute_seconds = 0.0  # of the whole batch it ran in
        self.merged = False  # with other steps, in one step_many


class InferenceScheduler:
    """Forward, sessions and batched steps of one backend, run by one worker."""

    def __init__(
        self, backend: SpanBackend, worker: Submitter, config: SchedulerConfig | None = None
    ) -> None:
        self.backend = backend
        self.config = config or SchedulerConfig()
        self._worker = worker
        self._pending: list[_Pending] = []
        self._in_flight: list[_Pending] = []
        self._has_pending = trio.Event()
        self._arrival = trio.Event()  # set by every step that arrives
        self._gathering = StepGathering()
        self._last_active: dict[str, float] = {}
        self._busy: dict[str, int] = {}
        self._reaper_wakeup = trio.Event()
        self.batches_run = 0  # step_many jobs (statistics)
        self.steps_batched = 0  # steps that went through step_many
        self.sessions_expired = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._batch_loop)
            nursery.start_soon(self._reap_loop)
            task_status.started()

    # ----- API for the RPC handlers -----
    async def forward(
        self,
        hidden_states: torch.Tensor,
        start: int | None = None,
        end: int | None = None,
        attention_mask: Sequence[Sequence[int]] | None = None,
        *,
        adapter: str | None = None,
        keep_for: str | None = None,
    ) -> tuple[torch.Tensor, str | None]:
        """The output, and with `keep_for` (a caller whose backward will follow) the token of
        the graph kept for it, if it was (`SpanBackend.forward_kept`)."""
        request = (hidden_states, start, end, attention_mask)
        if keep_for is None:
            forward = partial(self.backend.forward, adapter=adapter)
            return await self._worker.submit(forward, *request), None
        kept = partial(self.backend.forward_kept, adapter=adapter, owner=keep_for)
        return await self._worker.submit(kept, *request)

    async def backward(
        self,
        inputs: torch.Tensor,
        grad_outputs: torch.Tensor,
        start: int | None = None,
        end: int | None = None,
        attention_mask: Sequence[Sequence[int]] | None = None,
        *,
        adapter: str | None = None,
        kept: str | None = None,
        owner: str = "",
    ) -> torch.Tensor:
        backward = partial(self.backend.backward, adapter=adapter, kept=kept, owner=owner)
        return await self._worker.submit(backward, inputs, grad_outputs, start, end, attention_mask)

    async def release(self, tokens: Sequence[str], owner: str) -> int:
        """Drop the graphs kept for `owner` under `tokens` (`KeptForwards.drop`), in the
        compute thread, the only one that touches them; how many there were."""
        return await self._worker.submit(self.backend.kept.drop, tokens, owner)

    async def open_session(
        self,
        session_id: str,
        max_length: int,
        batch_size: int = 1,
        start: int | None = None,
        end: int | None = None,
        padding: Sequence[int] = (),
        *,
        adapter: str | None = None,
        fork_of: str | None = None,
        fork_tokens: int = 0,
    ) -> SessionInfo:
        """`SpanBackend.open_session` in the compute thread (a fork copies between steps)."""
        open_session = partial(self.backend.open_session, fork_of=fork_of, fork_tokens=fork_tokens)
        info = await self._worker.submit(
            open_session, session_id, max_length, batch_size, start, end, padding, adapter
        )
        self._last_active[session_id] = trio.current_time()
        self._reaper_wakeup.set()
        return info

    async def close_session(self, session_id: str) -> bool:
        """Close a session; False if it was not open (e.g. it expired)."""
        self._last_active.pop(session_id, None)
        self._gathering.forget(session_id)
        try:
            await self._worker.submit(self.backend.close_session, session_id)
        except SessionNotFoundError:
            return False
        return True

    async def step(
        self,
        session_id: str,
        hidden_states: torch.Tensor,
        start: int | None = None,
        end: int | None = None,
        *,
        reorder: tuple[int, ...] = (),
        position: int | None = None,
    ) -> torch.Tensor:
        done = await self.step_timed(
            session_id, hidden_states, start, end, reorder=reorder, position=position
        )
        return done.output

    async def step_timed(
        self,
        session_id: str,
        hidden_states: torch.Tensor,
        start: int | None = None,
        end: int | None = None,
        *,
        reorder: tuple[int, ...] = (),
        position: int | None = None,
    ) -> StepDone:
        """`step`, with its compute time and whether it ran merged; `reorder` and
        `position`: see `SpanBackend.step`."""
        request = StepRequest(session_id, hidden_states, start, end, reorder, position)
        self._busy[session_id] = self._busy.get(session_id, 0) + 1
        self._gathering.arrived(session_id, trio.current_time())
        self._arrival.set()
        compute: float | None = None
        batchable = self._batchable(hidden_states)
        try:
            alone = self.backend.active_sessions == 1  # nothing to merge with: skip a hop
            if not alone and batchable:
                done = await self._step_batched(request)
            else:
                output, seconds = await self._worker.submit(_timed, self.backend.run_step, request)
                done = StepDone(output, seconds)
            compute = done.compute_seconds if batchable else None
            return done
        finally:
            self._gathering.finished(session_id, trio.current_time(), compute)
            self._busy[session_id] -= 1
            if not self._busy[session_id]:
                del self._busy[session_id]
            if session_id in self._last_active:
                self._last_active[session_id] = trio.current_time()
                self._reaper_wakeup.set()  # its deadline moved (or it stopped being busy)

    # ----- batching -----
    def _batchable(self, hidden: object) -> bool:
        return (
            self.config.batching
            and isinstance(hidden, torch.Tensor)
            and hidden.dim() == 3
            and hidden.shape[1] == 1
        )

    async def _step_batched(self, request: StepRequest) -> StepDone:
        pending = _Pending(request)
        self._pending.append(pending)
        self._has_pending.set()
        try:
            await pending.done.wait()
        except BaseException:
            if pending in self._pending:
                self._pending.remove(pending)
            raise
        if pending.result is None:  # pragma: no cover - the loop always sets a result
            raise PeerError("step was dropped")
        return StepDone(pending.result.unwrap(), pending.compute_seconds, pending.merged)

    async def _batch_loop(self) -> None:
        try:
            await self._batch_forever()
        finally:  # the scheduler stops: steps still waiting get an error, not a hang
            for pending in [*self._in_flight, *self._pending]:
                if not pending.done.is_set():
                    pending.result = outcome.Error(WorkerClosedError("the scheduler stopped"))
                    pending.done.set()
            self._pending.clear()

    async def _batch_forever(self) -> None:
        while True:
            await self._has_pending.wait()
            self._has_pending = trio.Event()
            await trio.lowlevel.checkpoint()  # let steps sent in this same tick join
            if self.config.gathering and self._pending:
                await self._gather()
            while self._pending:
                batch = self._pending[: self.config.max_batch]
                del self._pending[: self.config.max_batch]
                self._in_flight = batch
                requests = [p.request for p in batch]
                results: list[outcome.Outcome[torch.Tensor]]
                merged, seconds = False, 0.0
                try:
                    job = self._run_batch, requests
                    (results, merged), seconds = await self._worker.submit(_timed, *job)
                except Exception as error:  # e.g. WorkerClosedError: every step gets it
                    results = [outcome.Error(error)] * len(batch)
                for pending, result in zip(batch, results, strict=True):
                    pending.result = result
                    pending.compute_seconds, pending.merged = seconds, merged
                    pending.done.set()

    async def _gather(self) -> None:
        """Wait until the sessions expected back within a merge's worth of time are here,
        or that time is up (`StepGathering`)."""
        window = self._gathering.window()
        deadline = trio.current_time() + window
        while window > 0 and self._gathering.awaited(trio.current_time(), window):
            self._arrival = trio.Event()
            with trio.move_on_at(deadline) as scope:
                await self._arrival.wait()
            if scope.cancelled_caught:
                return

    def _run_batch(
        self, requests: list[StepRequest]
    ) -> tuple[list[outcome.Outcome[torch.Tensor]], bool]:
        """In the worker thread: one step_many, or one by one if the batch has a bad request;
        and whether they ran merged."""
        if len(requests) > 1:
            try:
                outputs = self.backend.step_many(requests)
            except PeerError:  # validated before running: nothing changed, retry singly
                pass
            else:
                self.batches_run += 1
                self.steps_batched += len(requests)
                return [outcome.Value(output) for output in outputs], True
        return [outcome.capture(self.backend.run_step, request) for request in requests], False

    # ----- idle expiry -----
    async def _reap_loop(self) -> None:
        timeout = self.config.idle_timeout
        while True:
            now = trio.current_time()
            idle = [s for s, t in self._last_active.items() if s not in self._busy]
            for session_id in [s for s in idle if now - self._last_active[s] >= timeout]:
                if await self.close_session(session_id):
                    self.sessions_expired += 1
                    logger.info("closed session %s after %.0f s idle", session_id, timeout)
            deadline = min(
                (t + timeout for s, t in self._last_active.items() if s not in self._busy),
                default=math.inf,
            )
            self._reaper_wakeup = trio.Event()
            with trio.move_on_at(deadline):
                await self._reaper_wakeup.wait()
