"""How others reach a peer: where it listens, or through a circuit relay.

A peer listens where its config says and announces the address others dial
(`routing.public_address`). Once it has joined, it asks its initial peers to dial it back
there (`routing.rpc.reach`); if they cannot, it serves through the nearest circuit relay
listed in the DHT instead (`routing.relay_directory`), unless told not to. A peer given
`via` listens nowhere and serves through that relay from the start. Either way, a relay
lost for a while is traded for another listed one, and the peer announces its new address
at once (`announce_moves`).
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import TYPE_CHECKING, Protocol

import trio

from routing.address import PeerAddress
from routing.announcement import PeerState
from routing.dht import DHTNode
from routing.public_address import PublicAddress
from routing.relay_directory import find_relays, nearest_relay
from routing.rpc import RPCHost, log_reach, serve_via

if TYPE_CHECKING:
    from .announcer import Announcer
    from .daemon import PeerConfig

logger = logging.getLogger(__name__)


class Reachability:
    """Where the peer of `config` listens, and how others reach it (see the module doc)."""

    def __init__(self, config: PeerConfig, rpc: RPCHost, dht: DHTNode) -> None:
        self.config = config
        self.rpc = rpc
        self.dht = dht
        self.reached: bool | None = None  # what the reach check found, if it ran
        self._moved, self._moves = trio.open_memory_channel[PeerAddress](math.inf)
        self._circuit = partial(serve_via, another=self._another, moved=self._moved.send_nowait)

    async def listen(self, *, task_status: trio.TaskStatus[PeerAddress]) -> None:
        """Listen where the config says, or through its relay (`via`); started value: where
        others reach the peer."""
        config = self.config
        if config.via is None:
            public = PublicAddress(config.public_host, config.public_port, config.initial_peers)
            await self.rpc.run(config.host, config.port, public, task_status=task_status)
            return
        async with trio.open_nursery() as nursery:
            await nursery.start(self.rpc.run_outbound)
            task_status.started(await nursery.start(self._circuit, self.rpc, config.via))

    async def reached_at(self, nursery: trio.Nursery) -> PeerAddress:
        """Once the DHT has joined: where others reach the peer. Where it listens, if its
        initial peers can dial it there; else, unless the config says not to, through the
        nearest circuit relay listed in the DHT (served in `nursery`), if one answers."""
        config, rpc = self.config, self.rpc
        if config.via is not None:
            return rpc.address
        reach = await log_reach(rpc, config.initial_peers)  # can others dial us?
        self.reached = None if reach is None else reach.reached
        if reach is None or reach.reached or not config.auto_circuit:
            return rpc.address
        relay = await nearest_relay(rpc, await find_relays(self.dht))
        if relay is None:
            logger.warning("no circuit relay listed in the DHT answers: serving at %s anyway",
                           rpc.address)  # fmt: skip
            return rpc.address
        address: PeerAddress = await nursery.start(self._circuit, rpc, relay)
        return address

    async def announce_moves(self, peer: _Addressed, announcer: Announcer) -> None:
        """Announce each new circuit address at once, when a relay was traded."""
        async for address in self._moves:
            peer.address = address
            await announcer.publish(PeerState.ONLINE)
            logger.warning("serving through another relay now, at %s (announced)", address)

    async def _another(self, lost: PeerAddress) -> PeerAddress | None:
        listed = [relay for relay in await find_relays(self.dht) if relay.peer_id != lost.peer_id]
        return await nearest_relay(self.rpc, listed)


class _Addressed(Protocol):
    """What `announce_moves` updates: the peer's address, which its announcements carry."""

    address: PeerAddress | None
