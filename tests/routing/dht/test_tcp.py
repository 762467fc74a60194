"""Ten DHT nodes over real TCP on loopback: a record stored through one is read through another.

The same scenario as ten `swarm dht` processes (the CLI test is the lead's), in one process.
"""

from __future__ import annotations

from functools import partial

import trio

from routing.dht import DHTNode, serve_dht_node
from routing.transport import TcpTransport
from security import Identity

KEY = "tiny-model.5"


async def test_ten_nodes_over_loopback_tcp() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:

            async def start(initial_peers: list) -> DHTNode:
                return await nursery.start(  # type: ignore[no-any-return]
                    partial(
                        serve_dht_node,
                        Identity.generate(),
                        TcpTransport(),
                        "127.0.0.1",
                        0,
                        initial_peers,
                    )
                )

            first = await start([])
            assert first.address is not None and first.address.port > 0
            nodes = [first] + [await start([first.address]) for _ in range(9)]
            assert len({node.address for node in nodes}) == 10
            assert await nodes[3].store_own(KEY, b"served by node 3", ttl=60) == 10
            got = await nodes[8].get(KEY)
            assert {peer: value.value for peer, value in got.items()} == {
                nodes[3].peer_id: b"served by node 3"
            }
            assert str(nodes[8].address).startswith("127.0.0.1:")
            nursery.cancel_scope.cancel()
