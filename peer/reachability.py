"""How others reach a peer: where it listens, or through a circuit relay.

A peer listens where its config says and announces the address others dial
(`routing.public_address`). Once it has joined, it asks its initial peers to dial it back
there (`routing.rpc.reach`); if they cannot, it serves through the nearest circuit relay
listed in the DHT that takes it (`routing.relay_directory`), unless told not to. A peer
given `via` listens nowhere and serves through that relay from the start. Either way, a
relay lost for a while is traded for another listed one.

Reachability changes, so it is checked again every `recheck` seconds (`keep_reachable`),
by its initial peers and a few DHT nodes it knows, at the address it listens at: a peer
others can dial no more (its router forgot the forwarded port) takes a relay; one served
through a relay that others can dial again (the port is forwarded now) leaves it, and the
sessions open through it end there (the relay takes no new circuit for it); one that found
no relay to take looks again. Each new address is announced at once.
"""

from __future__ import annotations

import logging
import math
import random
from functools import partial
from typing import TYPE_CHECKING, Protocol

import trio

from routing.address import PeerAddress
from routing.announcement import PeerState
from routing.dht import DHTNode
from routing.errors import RoutingError
from routing.public_address import PublicAddress
from routing.relay_directory import find_relays, nearest_relay
from routing.rpc import RPCHost, ask_reach, log_reach, serve_via

if TYPE_CHECKING:
    from .daemon import PeerConfig

logger = logging.getLogger(__name__)

DHT_OPINIONS = 4  # DHT nodes asked at most, after the initial peers, when checking again


class Reachability:
    """Where the peer of `config` listens, and how others reach it (see the module doc)."""

    def __init__(self, config: PeerConfig, rpc: RPCHost, dht: DHTNode) -> None:
        self.config = config
        self.rpc = rpc
        self.dht = dht
        self.reached: bool | None = None  # what the last reach check found, if one did
        self._direct: PeerAddress | None = None  # where it listens, when it does
        self._leave: trio.Event | None = None  # set to leave the relay it took by itself
        self._nursery: trio.Nursery | None = None  # where such a circuit is served
        self._moved, self._moves = trio.open_memory_channel[PeerAddress](math.inf)
        self._serve_via = partial(serve_via, another=self._another, moved=self._moved.send_nowait)

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
            task_status.started(await nursery.start(self._serve_via, self.rpc, config.via))

    async def reached_at(self, nursery: trio.Nursery) -> PeerAddress:
        """Once the DHT has joined: where others reach the peer. Where it listens, if its
        initial peers can dial it there; else, unless the config says not to, through the
        nearest circuit relay listed in the DHT that takes it (served in `nursery`)."""
        if self.config.via is not None:
            return self.rpc.address
        self._direct, self._nursery = self.rpc.address, nursery
        reach = await log_reach(self.rpc, self.config.initial_peers)  # can others dial us?
        await self._follow(None if reach is None else reach.reached)
        return self.rpc.address

    async def keep_reachable(self, peer: _Addressed, announcer: _Publisher) -> None:
        """Check again every `recheck_reach` seconds, as the module doc says, and announce
        each new address at once (a relay traded for another included)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce_moves, peer, announcer)
            if self._direct is not None and self.config.recheck_reach > 0:
                nursery.start_soon(self._recheck)

    async def _recheck(self) -> None:
        while True:
            await trio.sleep(self.config.recheck_reach)
            before = self.rpc.address
            reach = await ask_reach(self.rpc, self._askers(), self._direct)
            if reach is not None and reach.reached != self.reached:
                can = "can" if reach.reached else "cannot"
                logger.warning("others %s reach us at %s now", can, self._direct)
            await self._follow(None if reach is None else reach.reached)
            if self.rpc.address != before:
                self._moved.send_nowait(self.rpc.address)

    def _askers(self) -> list[PeerAddress]:
        """Who is asked: the initial peers, then a few DHT nodes (another view of us)."""
        known = [node for node in self.dht.table if node not in self.config.initial_peers]
        return [*self.config.initial_peers, *random.sample(known, min(DHT_OPINIONS, len(known)))]

    async def _follow(self, reached: bool | None) -> None:
        """Serve where the reach check says others reach us (None: nobody could say)."""
        self.reached = reached if reached is not None else self.reached
        if reached and self._leave is not None:
            self._leave_relay()
        elif reached is False and self._leave is None and self.config.auto_circuit:
            await self._take_relay()

    async def _take_relay(self) -> None:
        """Serve through the nearest listed relay that takes us, if one does."""
        assert self._nursery is not None  # set by `reached_at`, which calls this first
        relays = await find_relays(self.dht)
        while (relay := await nearest_relay(self.rpc, relays)) is not None:
            try:
                await self._nursery.start(self._serve_circuit, relay)
                return
            except RoutingError as error:  # it is full, say: the next one
                logger.info("the relay %s did not take us: %s", relay, error)
                relays.remove(relay)
        logger.warning("no circuit relay listed in the DHT takes us: serving at %s anyway",
                       self.rpc.address)  # fmt: skip

    async def _serve_circuit(
        self, relay: PeerAddress, *, task_status: trio.TaskStatus[PeerAddress]
    ) -> None:
        self._leave = leave = trio.Event()
        try:
            await self._serve_via(self.rpc, relay, leave=leave, task_status=task_status)
        finally:
            if self._leave is leave:
                self._leave = None

    def _leave_relay(self) -> None:
        """Serve where the peer listens again, with no relay in between: new sessions come
        there, those open through the relay end there."""
        assert self._leave is not None and self._direct is not None
        self._leave.set()
        self._leave = None
        self.rpc.set_address(self._direct)
        logger.info("left the relay: serving at %s", self._direct)

    async def _announce_moves(self, peer: _Addressed, announcer: _Publisher) -> None:
        async for address in self._moves:
            peer.address = address
            await announcer.publish(PeerState.ONLINE)
            logger.warning("announced our new address, %s", address)

    async def _another(self, lost: PeerAddress) -> PeerAddress | None:
        listed = [relay for relay in await find_relays(self.dht) if relay.peer_id != lost.peer_id]
        return await nearest_relay(self.rpc, listed)


class _Addressed(Protocol):
    """What `keep_reachable` updates: the peer's address, which its announcements carry."""

    address: PeerAddress | None


class _Publisher(Protocol):
    """What announces it (the `Announcer`)."""

    async def publish(self, state: PeerState) -> None: ...
