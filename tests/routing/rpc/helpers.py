"""Shared set-up for the RPC tests: hosts on the in-memory network or on loopback TCP."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial

import trio

from routing.address import PeerAddress
from routing.memory_network import MemoryNetwork
from routing.rpc import BidiStream, CallContext, Packet, RPCConfig, RPCHost
from routing.transport import StreamHandler as StreamHandlerT
from routing.transport import Transport
from security import Identity


async def echo(request: Packet, context: CallContext) -> Packet:
    return Packet(dict(request.header), bytes(request.body))


async def double(stream: BidiStream, context: CallContext) -> None:
    """A stream handler that answers each packet `{"v": n}` with `{"v": 2n}`, body kept."""
    async for packet in stream:
        await stream.send(Packet({"v": 2 * packet.header["v"]}, packet.body))


async def start_host(
    nursery: trio.Nursery,
    transport: Transport,
    host: str,
    config: RPCConfig | None = None,
    port: int = 4000,
) -> RPCHost:
    rpc = RPCHost(Identity.generate(), transport, config)
    await nursery.start(partial(rpc.run, host, port))
    return rpc


@asynccontextmanager
async def memory_pair(
    config: RPCConfig | None = None, network: MemoryNetwork | None = None
) -> AsyncIterator[tuple[MemoryNetwork, RPCHost, RPCHost, trio.Nursery]]:
    """A server host (10.0.0.1, with "echo") and a client host (10.0.0.2)."""
    network = network or MemoryNetwork()
    async with trio.open_nursery() as nursery:
        server = await start_host(nursery, network.transport("10.0.0.1"), "10.0.0.1", config)
        server.add_unary("echo", echo)
        client = await start_host(nursery, network.transport("10.0.0.2"), "10.0.0.2", config)
        yield network, server, client, nursery
        nursery.cancel_scope.cancel()


def address_of(rpc: RPCHost) -> PeerAddress:
    return rpc.address


def count_tasks() -> int:
    """Every task in this trio run (from the root task down through every nursery)."""
    count = 0
    root = trio.lowlevel.current_root_task()
    if root is None:  # unreachable inside trio.run
        raise RuntimeError("not in a trio run")
    pending = [root]
    while pending:
        task = pending.pop()
        count += 1
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return count


async def wait_until(predicate: Callable[[], bool], *, within: float = 30.0) -> None:
    """Poll `predicate` (a count, a flag) until it holds; TooSlowError after `within` s."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 (polls a count, there is no event)
            await trio.sleep(0.01)


class CountingTransport:
    """A `Transport` that counts the connections it opens (to see dials and re-dials)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.connects = 0

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        self.connects += 1
        return await self.inner.connect(host, port)

    async def serve(
        self,
        host: str,
        port: int,
        handler: StreamHandlerT,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        await self.inner.serve(host, port, handler, task_status=task_status)
