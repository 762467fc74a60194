"""Shared set-up for the RPC tests: hosts on the in-memory network or on loopback TCP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

from routing.address import PeerAddress
from routing.memory_network import MemoryNetwork
from routing.rpc import CallContext, Packet, RPCConfig, RPCHost
from routing.transport import Transport
from security import Identity


async def echo(request: Packet, context: CallContext) -> Packet:
    return Packet(dict(request.header), bytes(request.body))


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
