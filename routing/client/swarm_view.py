"""The client's view of the swarm for one model: who serves what, how far, who is banned.

`refresh()` reads every block's DHT key concurrently, keeps each peer's freshest record if it
is `online`, names this model, fits its length and carries the signer's own address, then
pings those peers concurrently and folds the RTTs into smoothed values. `run()` refreshes
every `refresh_period` seconds, so that peers that join are used and the load figures stay
current. `route()` turns the view into the fastest chain over a block range
(`routing.path_selection`), leaving out banned peers, peers short of cache, peers that
did not answer their last ping (until one answers again), for a client that runs a LoRA
adapter, peers that do not announce it, and for one that asks for exact weights, int8 peers.

Announcements can be a minute old, so the room they show is a hint: a peer that refuses a
session for want of room is seen as full (`mark_full`), not banned, and `recheck()` asks
peers for their numbers now (`span.info`) before a client gives up for want of room.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from security import PeerId

from ..address import PeerAddress
from ..announcement import PeerAnnouncement, PeerState, block_key
from ..dht import DHTNode
from ..errors import ProtocolError, RoutingError
from ..path_selection import (
    Candidate,
    Hop,
    NoRoomError,
    NoRouteError,
    fastest_chain,
    spread_choice,
)
from ..rpc import Packet, RPCHost
from ..span_protocol import INFO
from .bans import Bans
from .rtt import RttTable

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientConfig:
    """Timeouts of the client's chain, and whether it relays."""

    step_timeout: float = 10.0  # seconds a hop may take for a one-token step
    step_timeout_per_token: float = 0.05  # added per token of a longer step (prompt, replay)
    ping_timeout: float = 1.0
    liveness_after: float = 0.5  # a step unanswered this long: the peer must answer a ping
    refresh_period: float = 30.0  # `run()` re-reads the DHT and pings every peer this often
    lookup_timeout: float = 10.0  # one DHT read
    open_timeout: float = 10.0  # connect + open a session
    max_failovers: int = 16  # per step, before the step fails
    room_wait: float = 30.0  # seconds a recovery waits for room on full replicas
    relay: bool = True  # peers pass hidden states straight to the next hop (where they can)
    exact_weights: bool = False  # only peers with the checkpoint's own weights (no int8 ones)

    def deadline(self, hidden: torch.Tensor) -> float:
        """Seconds a hop may take over `hidden` (`[..., batch, length, hidden]`)."""
        tokens = int(hidden.shape[-3]) * int(hidden.shape[-2])
        return self.step_timeout + self.step_timeout_per_token * tokens


def usable_announcements(
    records: dict[PeerId, PeerAnnouncement],
    model: str,
    num_blocks: int,
    states: frozenset[PeerState] = frozenset({PeerState.ONLINE}),
) -> dict[str, PeerAnnouncement]:
    """The announcements a client may route through (in `states`), by peer id. Pure."""
    usable = {}
    for signer, announcement in records.items():
        if (
            announcement.state in states
            and announcement.model == model
            and announcement.end <= num_blocks
            and announcement.address.peer_id == signer
        ):
            usable[str(signer)] = announcement
    return usable


async def ask_announcement(
    rpc: RPCHost,
    address: PeerAddress,
    timeout: float,  # noqa: ASYNC109
) -> PeerAnnouncement:
    """The peer's announcement as it stands now (`span.info`). The channel is authenticated
    as the peer, which speaks for itself only; RoutingError if it does not answer, or answers
    with an error or something else (ProtocolError)."""
    reply = await rpc.call(address, INFO, Packet({}), timeout=timeout)
    fresh = PeerAnnouncement.from_fields(reply.header)
    if fresh.address.peer_id != address.peer_id:
        raise ProtocolError("span.info answered for another peer")
    return fresh


async def read_announcements(
    dht: DHTNode, model: str, num_blocks: int, lookup_timeout: float
) -> dict[PeerId, PeerAnnouncement]:
    """Every signer's freshest announcement under the model's block keys, in any state
    (each key's lookup bounded by `lookup_timeout` seconds)."""
    freshest: dict[PeerId, tuple[float, PeerAnnouncement]] = {}

    async def read(block: int) -> None:
        with trio.move_on_after(lookup_timeout):
            try:
                values = await dht.get(block_key(model, block))
            except RoutingError as error:
                logger.debug("reading block %d failed: %s", block, error)
                return
            for signer, value in values.items():
                try:
                    announcement = PeerAnnouncement.decode(value.value)
                except ProtocolError:
                    continue
                known = freshest.get(signer)
                if known is None or known[0] < value.expiration:
                    freshest[signer] = (value.expiration, announcement)

    async with trio.open_nursery() as nursery:
        for block in range(num_blocks):
            nursery.start_soon(read, block)
    return {signer: announcement for signer, (_, announcement) in freshest.items()}


class SwarmView:
    """Peers serving `model` (of `num_blocks` blocks), their RTTs, and bans."""

    def __init__(
        self,
        rpc: RPCHost,
        dht: DHTNode,
        model: str,
        num_blocks: int,
        config: ClientConfig | None = None,
        *,
        adapter: str | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.rpc = rpc
        self.dht = dht
        self.model = model
        self.num_blocks = num_blocks
        self.config = config or ClientConfig()
        self.adapter = adapter  # a LoRA adapter every hop must run (peers that announce it)
        self.peers: dict[str, PeerAnnouncement] = {}
        self.rtts = RttTable()
        self.bans = Bans(clock)
        self.unreachable: set[str] = set()  # peers that did not answer their last ping

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Refresh now, then every `refresh_period` seconds."""
        await self.refresh()
        task_status.started()
        while True:
            await trio.sleep(self.config.refresh_period)
            await self.refresh()

    async def refresh(self) -> None:
        """Read the DHT and ping what it lists."""
        records = await read_announcements(
            self.dht, self.model, self.num_blocks, self.config.lookup_timeout
        )
        peers = usable_announcements(records, self.model, self.num_blocks)
        if peers.keys() != self.peers.keys():
            logger.info("%d peers serve %s", len(peers), self.model)
        for peer, announcement in peers.items():
            known = self.peers.get(peer)
            if known is not None and known.address != announcement.address:
                self.bans.forgive(peer)  # it moved (left a relay, took one): what failed was
                # its old address
        self.peers = peers
        self.unreachable &= peers.keys()
        async with trio.open_nursery() as nursery:
            for announcement in self.peers.values():
                nursery.start_soon(self.ping, announcement.address)

    async def ping(self, address: PeerAddress) -> bool:
        """Ping a peer (its RTT joins the smoothed one); False if it does not answer, and
        routes leave it out until it answers a ping again."""
        peer = str(address.peer_id)
        try:
            seconds = await self.rpc.ping(address, timeout=self.config.ping_timeout)
        except RoutingError:
            self.unreachable.add(peer)
            return False
        self.unreachable.discard(peer)
        self.rtts.observe(peer, seconds)
        return True

    async def recheck(self, start: int, end: int) -> None:
        """Ask the peers serving blocks [start, end) for their announcement now (sessions,
        cache left), concurrently; one that does not answer keeps what the view had."""

        async def ask(peer: str, known: PeerAnnouncement) -> None:
            try:
                fresh = await ask_announcement(self.rpc, known.address, self.config.ping_timeout)
            except RoutingError as error:
                logger.debug("peer %s did not say how full it is: %s", peer[:8], error)
                return
            usable = usable_announcements(
                {known.address.peer_id: fresh}, self.model, self.num_blocks
            )
            others = {name: a for name, a in self.peers.items() if name != peer}  # copy on
            self.peers = others | usable  # write: a chain may be routing over the old dict

        async with trio.open_nursery() as nursery:
            for peer, announcement in self.peers.items():
                if announcement.start < end and start < announcement.end:
                    nursery.start_soon(ask, peer, announcement)

    def mark_full(self, peer: str) -> None:
        """`peer` refused a session for want of room: routes leave it out for sessions of any
        size until the next `refresh()` or `recheck()` says otherwise."""
        if (known := self.peers.get(peer)) is not None:
            self.peers = self.peers | {peer: dataclasses.replace(known, cache_tokens_left=0)}

    def candidates(self) -> list[Candidate]:
        return [
            Candidate(
                peer=peer,
                start=announcement.start,
                end=announcement.end,
                throughput=announcement.throughput,
                sessions=announcement.sessions,
                cache_tokens_left=announcement.cache_tokens_left,
                rtt=self.rtts.get(peer),
                max_session_length=announcement.max_session_length,
            )
            for peer, announcement in self.peers.items()
            if (self.adapter is None or self.adapter in announcement.adapters)
            and not (self.config.exact_weights and announcement.quantization)
        ]

    def route(
        self,
        start: int,
        end: int,
        tokens_needed: int = 0,
        session_length: int = 0,
        avoid: frozenset[str] = frozenset(),
    ) -> list[Hop]:
        """The fastest chain over blocks [start, end) for a session of `session_length` tokens
        that needs `tokens_needed` cache tokens, without the peers in `avoid`; NoRouteError
        names what is missing (NoRoomError if only room is)."""
        with self._naming_what_is_asked():
            return fastest_chain(
                self.candidates(),
                self.num_blocks,
                start=start,
                end=end,
                tokens_needed=tokens_needed,
                session_length=session_length,
                banned=self._avoided() | avoid,
            )

    def spread(self, start: int, rng: random.Random) -> list[Hop]:
        """A chain over blocks [start, N) for batch forward, replicas drawn by spare
        throughput (`routing.path_selection.spread_choice`); leaves out whom `route` does."""
        with self._naming_what_is_asked():
            return spread_choice(
                self.candidates(), self.num_blocks, rng=rng, banned=self._avoided(), start=start
            )

    @contextmanager
    def _naming_what_is_asked(self) -> Iterator[None]:
        """A NoRouteError says which adapter and which weights the client asked for."""
        try:
            yield
        except NoRouteError as error:
            exact = self.config.exact_weights
            asked = self.adapter is not None or exact
            if not asked or type(error) not in (NoRouteError, NoRoomError):
                raise
            weights = "with the checkpoint's own weights (no int8 peer)" if exact else ""
            condition = ", ".join(filter(None, [error.condition, weights]))
            raise type(error)(error.missing, self.adapter, condition) from None

    def _avoided(self) -> frozenset[str]:
        """Banned peers, and peers that did not answer their last ping."""
        return self.bans.banned() | self.unreachable
