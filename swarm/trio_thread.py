"""One trio loop in one thread, owned by a synchronous object (the client's facade).

The only background event loop in the project (DESIGN.md): `DistributedModelForCausalLM`
starts one when it is created and stops it in `close()`. Plain Python calls into it with
`run(async_fn, ...)`; long-lived services (the RPC host, the DHT node) are started in its
nursery with `start_service(service, ...)` and stop with the loop.

Ctrl-C: Python raises KeyboardInterrupt in the main thread, which is waiting in `run()` for
the loop while the work goes on there. `run()` then cancels that work (its own cancel scope
in the loop), waits until it has unwound, and raises KeyboardInterrupt. So a step in flight
is abandoned, not left running, and whatever the caller closes next (the remote sessions)
is closed after it, never beside it.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, TypeVar

import outcome
import trio

T = TypeVar("T")


class LoopStoppedError(RuntimeError):
    """The client's event loop stopped (the model was closed) while a call was running."""


class TrioThread:
    """`start()`, then `run(...)` from any other thread, then `close()`."""

    def __init__(self, name: str = "swarm-client") -> None:
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._token is None:
            raise RuntimeError("the client's event loop did not start")

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run `await fn(*args)` in the loop and return its result (or raise its error).

        A KeyboardInterrupt while waiting cancels the call in the loop, waits for it to
        unwind, and is raised here.
        """
        token, nursery = self._token, self._nursery
        if token is None or nursery is None:
            raise LoopStoppedError("the client's event loop is not running")
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("run() was called from the loop's own thread (a deadlock)")
        call = _Call(fn, args)
        try:
            token.run_sync_soon(call.spawn, nursery)
            call.finished.wait()
        except trio.RunFinishedError:
            raise LoopStoppedError("the client's event loop stopped") from None
        except KeyboardInterrupt:
            # Queued after `spawn` if that was queued at all, so it either cancels the call
            # or makes sure it never starts.
            with suppress(trio.RunFinishedError):
                token.run_sync_soon(call.cancel)
            self._wait_ignoring_interrupts(call.finished)
            raise
        return call.result.unwrap()  # type: ignore[no-any-return]

    def _wait_ignoring_interrupts(self, finished: threading.Event) -> None:
        """Wait for a cancelled call to unwind (closing is shielded and time-limited)."""
        while self._thread.is_alive():
            try:
                if finished.wait(timeout=0.5):
                    return
            except KeyboardInterrupt:
                continue

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start `fn(*args)` in the loop and return at once, from any thread, a finalizer's
        included; nothing happens once the loop has stopped. `fn` must raise nothing."""
        token, nursery = self._token, self._nursery
        if token is None or nursery is None:
            return
        with suppress(trio.RunFinishedError):
            token.run_sync_soon(_start_soon, nursery, fn, args)

    def start_service(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """`nursery.start(fn, *args)` in the loop's nursery: runs until `close()`."""
        if self._nursery is None:
            raise LoopStoppedError("the loop is not running")
        return self.run(self._nursery.start, fn, *args)

    def close(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()


def _start_soon(
    nursery: trio.Nursery, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
) -> None:
    with suppress(RuntimeError):  # the nursery is closing: the loop is stopping
        nursery.start_soon(fn, *args)


class _Call:
    """One `run()` call: started in the loop by `spawn`, stopped there by `cancel`."""

    def __init__(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.scope = trio.CancelScope()
        self.finished = threading.Event()
        cancelled = LoopStoppedError("the call was cancelled")
        self.result: outcome.Outcome[Any] = outcome.Error(cancelled)
        self._spawned = False

    def spawn(self, nursery: trio.Nursery) -> None:
        if self.scope.cancel_called:  # interrupted before it started
            return
        try:
            nursery.start_soon(self._body)
            self._spawned = True
        except RuntimeError:  # the nursery is closing: the loop is stopping
            self.result = outcome.Error(LoopStoppedError("the client's event loop stopped"))
            self.finished.set()

    def cancel(self) -> None:
        self.scope.cancel()
        if not self._spawned:
            self.finished.set()

    async def _body(self) -> None:
        try:
            with self.scope:
                result = await outcome.acapture(self.fn, *self.args)
                if isinstance(result, outcome.Error) and _only_cancelled(result.error):
                    result.unwrap()  # cancelled by `run` (caught by the scope) or by `close`
                self.result = result
        finally:
            self.finished.set()


def _only_cancelled(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return error.split(trio.Cancelled)[1] is None
    return isinstance(error, trio.Cancelled)
