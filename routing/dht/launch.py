"""Build a running DHT node from (identity, transport, host, port, initial peers).

`open_dht_node` is for code that owns the node's lifetime in a `with` block (tests, the
benchmark, a client); `serve_dht_node` is the `run`-style form for `nursery.start`, whose
started value is the ready node (`str(node.address)` is its `HOST:PORT/PEER_ID`).
The DHT handlers are registered before the RPC host starts serving, so no early request
meets an unknown method.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import partial

import trio

from security import Identity

from ..address import PeerAddress
from ..public_address import PublicAddress
from ..relay_directory import list_relay
from ..rpc import CircuitRelay, RPCConfig, RPCHost, log_reach
from ..transport import Transport
from .config import DHTConfig
from .node import DHTNode


async def serve_dht_node(
    identity: Identity,
    transport: Transport,
    host: str,
    port: int,
    initial_peers: Sequence[PeerAddress] = (),
    *,
    config: DHTConfig | None = None,
    rpc_config: RPCConfig | None = None,
    public: PublicAddress | None = None,
    circuits: CircuitRelay | None = None,
    clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[DHTNode] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve RPC on host:port, join the swarm, report the ready node, run until cancelled
    (`public`: how others dial it, by default found toward `initial_peers`; `circuits`: a
    relay for peers that cannot be dialled)."""
    rpc = RPCHost(identity, transport, rpc_config or RPCConfig())
    if circuits is not None:
        circuits.register(rpc)
    node = DHTNode(rpc, config, clock=clock)
    public = public or PublicAddress(toward=tuple(initial_peers))
    async with trio.open_nursery() as nursery:
        await nursery.start(rpc.run, host, port, public)
        await nursery.start(partial(node.run, initial_peers=initial_peers))
        task_status.started(node)
        nursery.start_soon(log_reach, rpc, initial_peers)  # can others dial us?
        if circuits is not None:
            nursery.start_soon(list_relay, node, rpc.address)


@asynccontextmanager
async def open_dht_node(
    identity: Identity,
    transport: Transport,
    host: str = "127.0.0.1",
    port: int = 0,
    initial_peers: Sequence[PeerAddress] = (),
    *,
    config: DHTConfig | None = None,
    rpc_config: RPCConfig | None = None,
    clock: Callable[[], float] = time.time,
) -> AsyncIterator[DHTNode]:
    """A ready node for the duration of the block; stopped (cancelled) when it exits."""
    async with trio.open_nursery() as nursery:
        node: DHTNode = await nursery.start(
            partial(
                serve_dht_node,
                identity,
                transport,
                host,
                port,
                initial_peers,
                config=config,
                rpc_config=rpc_config,
                clock=clock,
            )
        )
        yield node
        nursery.cancel_scope.cancel()
