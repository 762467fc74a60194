"""A peer's reachability followed over time, over TCP on 127.0.0.1: a DHT node, relays that
list themselves, and a peer whose announced port is forwarded (`PortForward`) or not. Its
reach is checked again every fraction of a second here; every new address is announced."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from peer.daemon import PeerConfig
from peer.reachability import Reachability
from routing.address import PeerAddress
from routing.announcement import PeerState
from routing.dht import DHTNode, serve_dht_node
from routing.rpc import CircuitConfig, CircuitRelay, Packet, RPCHost
from routing.transport import TcpTransport
from security import Identity
from tests.routing.rpc.helpers import double
from tests.support.port_forward import PortForward
from tests.support.ports import free_port

LIMIT = 30  # seconds: every test here is bounded in real time
RECHECK = 0.2  # seconds between reach checks


@dataclass
class Announced:
    """The peer as the announcer sees it: its address, and each address it published."""

    address: PeerAddress | None = None
    published: list[PeerAddress | None] = field(default_factory=list)

    async def publish(self, state: PeerState) -> None:
        self.published.append(self.address)


@dataclass
class Swarm:
    bootstrap: DHTNode
    nursery: trio.Nursery

    async def relay(self, config: CircuitConfig | None = None) -> CircuitRelay:
        """A DHT node that relays circuits, and lists itself for it."""
        circuits = CircuitRelay(config or CircuitConfig())
        start = partial(serve_dht_node, Identity.generate(), TcpTransport(), "127.0.0.1", 0,
                        [self.bootstrap.address], circuits=circuits)  # fmt: skip
        await self.nursery.start(start)
        return circuits

    async def peer(self, port: int, public_port: int) -> tuple[Reachability, Announced]:
        """A peer listening at `port` that announces `public_port`, joined, following its
        reach (its first address decided)."""
        assert self.bootstrap.address is not None
        initial = (self.bootstrap.address,)
        config = PeerConfig(Path("unused"), port=port, public_port=public_port,
                            initial_peers=initial, recheck_reach=RECHECK)  # fmt: skip
        rpc = RPCHost(Identity.generate(), TcpTransport())
        rpc.add_stream("double", double)  # a session, as far as circuits go
        dht = DHTNode(rpc)
        reachability = Reachability(config, rpc, dht)
        await self.nursery.start(reachability.listen)
        await self.nursery.start(partial(dht.run, initial_peers=config.initial_peers))
        announced = Announced(await reachability.reached_at(self.nursery))
        self.nursery.start_soon(reachability.keep_reachable, announced, announced)
        return reachability, announced

    async def client(self) -> RPCHost:
        rpc = RPCHost(Identity.generate(), TcpTransport())
        await self.nursery.start(rpc.run_outbound)
        return rpc


@asynccontextmanager
async def _swarm() -> AsyncIterator[Swarm]:
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            start = partial(serve_dht_node, Identity.generate(), TcpTransport(), "127.0.0.1", 0)
            yield Swarm(await nursery.start(start), nursery)
            nursery.cancel_scope.cancel()


async def _until(ok: Callable[[], bool]) -> None:
    """Poll `ok` (bounded by the test's LIMIT)."""
    while True:
        if ok():
            return
        await trio.sleep(RECHECK / 4)


async def test_a_peer_others_cannot_dial_looks_for_a_relay_until_one_takes_it() -> None:
    """Only a full relay is listed at first: the peer serves where it listens, unreached
    (the relay's refusal does not stop it). A relay that takes it, listed later, is taken
    at the next check, and the circuit address announced."""
    async with _swarm() as swarm:
        full = await swarm.relay(CircuitConfig(max_listeners=0))
        reachability, announced = await swarm.peer(free_port(), public_port=free_port())
        assert reachability.reached is False and announced.address is not None
        assert announced.address.via is None and not full.listening
        roomy = await swarm.relay()
        await _until(lambda: bool(announced.published))
        (circuit,) = announced.published
        assert circuit is not None and circuit.peer_id == reachability.rpc.peer_id
        assert roomy.listening == {circuit.peer_id} and circuit == reachability.rpc.address


async def test_a_peer_follows_its_forwarded_port_to_a_relay_and_back() -> None:
    """Reached through its forwarded port, the peer serves there; the forward gone, it takes
    the listed relay; the forward back, it leaves the relay and serves there again, while a
    session open through the relay goes on there until it ends. Each move is announced."""
    hidden = free_port()
    async with _swarm() as swarm:
        relay = await swarm.relay()
        with PortForward(hidden) as forward:
            reachability, announced = await swarm.peer(hidden, public_port=forward.port)
            direct = reachability.rpc.address
            assert reachability.reached is True and announced.address == direct
            assert direct.port == forward.port and direct.via is None
        await _until(lambda: len(announced.published) == 1)
        circuit = announced.published[0]
        assert circuit is not None and circuit.via is not None and reachability.reached is False
        assert relay.listening == {direct.peer_id}
        client = await swarm.client()
        async with client.open_stream(circuit, "double") as session:
            with PortForward(hidden, port=forward.port):
                await _until(lambda: len(announced.published) == 2)
                assert announced.published[1] == direct == reachability.rpc.address
                assert reachability.reached is True
                await _until(lambda: not relay.listening)  # it stopped listening there
                for value in range(3):  # the session through the relay goes on
                    await session.send(Packet({"v": value}))
                    assert (await session.receive()).header == {"v": 2 * value}
                assert relay.load().open == 1
        await _until(lambda: relay.load().open == 0)  # its circuit ended with it
