"""Circuit relays listed in the DHT and chosen by a peer, over TCP on 127.0.0.1."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from routing.address import PeerAddress
from routing.dht import DHTConfig, DHTNode, open_dht_node
from routing.relay_directory import RELAY_TTL, RELAYS_KEY, find_relays, list_relay, nearest_relay
from routing.transport import TcpTransport
from security import Identity
from tests.support.ports import free_port

LIMIT = 20  # seconds: every test here is bounded in real time


async def _nodes(stack: AsyncExitStack, count: int) -> list[DHTNode]:
    first = await stack.enter_async_context(open_dht_node(Identity.generate(), TcpTransport()))
    nodes = [first]
    for _ in range(count - 1):
        node = open_dht_node(Identity.generate(), TcpTransport(), initial_peers=[first.address])
        nodes.append(await stack.enter_async_context(node))
    return nodes


async def test_relays_are_found_at_the_addresses_they_signed_for_themselves() -> None:
    """A listing that names another node, a circuit, or no address at all is passed over."""
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            relay, forger, circuit, garbage, _ = await _nodes(stack, 5)
            await list_relay(relay, relay.address)
            await forger.store_own(RELAYS_KEY, str(relay.address).encode(), RELAY_TTL)
            through = PeerAddress(relay.address.host, relay.address.port,
                                  circuit.rpc.peer_id, relay.rpc.peer_id)  # fmt: skip
            await circuit.store_own(RELAYS_KEY, str(through).encode(), RELAY_TTL)
            await garbage.store_own(RELAYS_KEY, b"\xff not an address", RELAY_TTL)
            reader = open_dht_node(Identity.generate(), TcpTransport(),
                                   initial_peers=[relay.address],
                                   config=DHTConfig(client_mode=True))  # fmt: skip
            reading = await stack.enter_async_context(reader)
            assert len(await reading.get(RELAYS_KEY)) == 4  # every listing arrived
            assert await find_relays(reading) == [relay.address]


async def test_the_nearest_relay_is_one_that_answers() -> None:
    with trio.fail_after(LIMIT):
        async with AsyncExitStack() as stack:
            asking, live = await _nodes(stack, 2)
            dead = PeerAddress("127.0.0.1", free_port(), Identity.generate().peer_id)
            assert await nearest_relay(asking.rpc, [dead, live.address]) == live.address
            assert await nearest_relay(asking.rpc, [dead]) is None
            assert await nearest_relay(asking.rpc, [asking.address]) is None  # not itself
