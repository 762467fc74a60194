"""Ten `swarm dht` processes on loopback: a record stored through one is read through another.

The writer and the reader are DHT clients in the test process (client mode: they hold no
records themselves), each bootstrapped from a different process, and the writer is gone before
the reader starts, so the record can only have travelled through the processes.
"""

from __future__ import annotations

import pytest
import trio

from routing.address import PeerAddress
from routing.dht import DHTConfig, open_dht_node
from routing.transport import TcpTransport
from security import Identity
from tests.support.processes import SwarmProcess, swarm_processes

pytestmark = pytest.mark.slow

KEY = "tiny-model.3"


async def _store_then_read(through: PeerAddress, read_from: PeerAddress) -> None:
    writer = Identity.generate()
    client = DHTConfig(client_mode=True)
    with trio.fail_after(30):
        async with open_dht_node(
            writer, TcpTransport(), initial_peers=[through], config=client
        ) as node:
            assert await node.store_own(KEY, b"hello from the writer", ttl=60) >= 1
        async with open_dht_node(
            Identity.generate(), TcpTransport(), initial_peers=[read_from], config=client
        ) as node:
            values = await node.get(KEY)
    assert {str(peer): value.value for peer, value in values.items()} == {
        str(writer.peer_id): b"hello from the writer"
    }


def test_a_record_travels_through_ten_dht_processes() -> None:
    with swarm_processes() as started:
        first = SwarmProcess(["dht"])
        started.append(first)
        bootstrap = first.wait_ready(60)
        others = [SwarmProcess(["dht", "--initial-peers", bootstrap]) for _ in range(9)]
        started.extend(others)
        addresses = [PeerAddress.parse(process.wait_ready(60)) for process in others]
        trio.run(_store_then_read, addresses[2], addresses[7])
        for process in started:
            assert process.stop() == 0, process.stderr()
            assert "Traceback" not in process.stderr()
