"""A fault relay for tests: a Transport that wraps a real one and, on command, delays, stalls
or cuts the connections a peer accepts.

Give a peer `FaultRelay(TcpTransport())` as its transport: every connection it accepts then
passes through the relay's streams, which sit between the client and the peer's RPC layer.
Commands (from the loop the peer runs in): `delay(seconds)` holds every chunk each way for
that long; `stall()` stops forwarding (nothing is lost, nothing moves) until `resume()`;
`drop(probability)` loses received chunks (on a byte stream that breaks the encrypted
framing, as a corrupting middlebox would: the peer closes the connection); `cut()` breaks
every open connection now. Outgoing connections pass untouched.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import trio

from routing.transport import Transport


class FaultRelay:
    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.latency = 0.0
        self.loss = 0.0
        self._random = random.Random(0)
        self._flowing = trio.Event()
        self._flowing.set()
        self._streams: set[_RelayedStream] = set()

    def delay(self, seconds: float) -> None:
        self.latency = seconds

    def drop(self, probability: float) -> None:
        self.loss = probability

    def stall(self) -> None:
        self._flowing = trio.Event()

    def resume(self) -> None:
        self._flowing.set()

    def cut(self) -> None:
        for stream in list(self._streams):
            stream.broken = True

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        return await self.inner.connect(host, port)

    async def serve(
        self,
        host: str,
        port: int,
        handler: Callable[[trio.abc.Stream], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async def relayed(stream: trio.abc.Stream) -> None:
            wrapped = _RelayedStream(stream, self)
            self._streams.add(wrapped)
            try:
                await handler(wrapped)
            finally:
                self._streams.discard(wrapped)

        await self.inner.serve(host, port, relayed, task_status=task_status)

    async def _pass(self) -> None:
        await self._flowing.wait()
        if self.latency:
            await trio.sleep(self.latency)


class _RelayedStream(trio.abc.Stream):
    def __init__(self, inner: trio.abc.Stream, relay: FaultRelay) -> None:
        self.inner = inner
        self.relay = relay
        self.broken = False

    def _check(self) -> None:
        if self.broken:
            raise trio.BrokenResourceError("cut by the fault relay")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.relay._pass()
        self._check()
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        while True:
            data = await self.inner.receive_some(max_bytes)
            await self.relay._pass()
            self._check()
            if not data or self.relay._random.random() >= self.relay.loss:
                return data

    async def send_eof(self) -> None:
        raise trio.BrokenResourceError("not supported")  # the RPC layer never sends EOF

    async def aclose(self) -> None:
        await self.inner.aclose()
