"""One trio loop in one thread, owned by a synchronous object (the client's facade).

The only background event loop in the project (DESIGN.md): `DistributedModelForCausalLM`
starts one when it is created and stops it in `close()`. Plain Python calls into it with
`run(async_fn, ...)`; long-lived services (the RPC host, the DHT node) are started in its
nursery with `start(service, ...)` and stop with the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


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
        """Run `await fn(*args)` in the loop and return its result (or raise its error)."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def start_service(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """`nursery.start(fn, *args)` in the loop's nursery: runs until `close()`."""
        if self._nursery is None:
            raise RuntimeError("the loop is not running")
        return self.run(self._nursery.start, fn, *args)

    def close(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()
