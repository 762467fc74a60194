"""Build many DHT nodes in one process on the in-memory network (tests and the benchmark)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import trio

from routing.address import PeerAddress
from routing.dht import DHTConfig, DHTNode, serve_dht_node
from routing.memory_network import MemoryNetwork
from security import Identity


@dataclass
class Member:
    node: DHTNode
    scope: trio.CancelScope

    @property
    def address(self) -> PeerAddress:
        address = self.node.address
        assert address is not None  # our own nodes serve
        return address

    def kill(self) -> None:
        self.scope.cancel()


@dataclass
class Swarm:
    network: MemoryNetwork
    nursery: trio.Nursery
    config: DHTConfig = field(default_factory=DHTConfig)
    clock: Callable[[], float] = trio.current_time
    members: list[Member] = field(default_factory=list)

    async def add(
        self, initial_peers: list[PeerAddress], identity: Identity | None = None
    ) -> Member:
        host = f"10.0.{len(self.members) // 250}.{len(self.members) % 250 + 1}"

        async def serve(*, task_status: trio.TaskStatus[Member]) -> None:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    node: DHTNode = await nursery.start(
                        partial(
                            serve_dht_node,
                            identity or Identity.generate(),
                            self.network.transport(host),
                            host,
                            4000,
                            initial_peers,
                            config=self.config,
                            clock=self.clock,
                        )
                    )
                    task_status.started(Member(node, scope))

        member: Member = await self.nursery.start(serve)
        self.members.append(member)
        return member

    async def grow(self, size: int, rng: random.Random, seeds: int = 3) -> None:
        """Join nodes one at a time, each bootstrapping from a few random earlier nodes."""
        if not self.members:
            await self.add([])
        while len(self.members) < size:
            known = [m.address for m in rng.sample(self.members, min(seeds, len(self.members)))]
            await self.add(known)
