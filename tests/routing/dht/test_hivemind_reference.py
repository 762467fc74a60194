"""Our ids and routing table against hivemind's (a reference nobody here wrote).

Importing hivemind takes seconds (it loads torch), which is why the DHT does not use it at
run time; here it checks that our pure table keeps the same nodes as hivemind's
`RoutingTable` and that our ids equal `DHTID.generate`.
"""

from __future__ import annotations

import random

import pytest

from routing.address import PeerAddress
from routing.dht.ids import key_id, node_id_of
from routing.dht.table import RoutingTable
from security import PeerId

routing = pytest.importorskip("hivemind.dht.routing")


def test_ids_equal_hivemind_dhtid() -> None:
    rng = random.Random(20)
    for _ in range(50):
        peer_id = PeerId(rng.randbytes(32))
        assert node_id_of(peer_id) == routing.DHTID.generate(source=peer_id.digest)
    for key in ("model.0", "swarm.models", "ünïcode.7"):
        assert key_id(key) == routing.DHTID.generate(source=key.encode())


@pytest.mark.parametrize(("bucket_size", "depth_modulo"), [(20, 5), (4, 2), (8, 1)])
def test_table_keeps_the_same_nodes_as_hivemind(bucket_size: int, depth_modulo: int) -> None:
    rng = random.Random(bucket_size * 10 + depth_modulo)
    own = PeerId(rng.randbytes(32))
    ours = RoutingTable(
        node_id_of(own), bucket_size=bucket_size, depth_modulo=depth_modulo, max_replacements=10_000
    )
    theirs = routing.RoutingTable(routing.DHTID(node_id_of(own)), bucket_size, depth_modulo)
    addresses = [PeerAddress("h", 1, PeerId(rng.randbytes(32))) for _ in range(600)]
    for address in addresses:
        node_id = node_id_of(address.peer_id)
        ours.update(address, now=0.0)
        theirs.add_or_update_node(routing.DHTID(node_id), address)
    for address in rng.sample(addresses, 100):  # some dead nodes: replacements move up
        node_id = node_id_of(address.peer_id)
        if node_id in ours:
            ours.remove(node_id)
            del theirs[routing.DHTID(node_id)]
    assert [(b.lower, b.upper) for b in ours.buckets] == [
        (b.lower, b.upper) for b in theirs.buckets
    ]
    for ours_bucket, theirs_bucket in zip(ours.buckets, theirs.buckets, strict=True):
        assert list(ours_bucket.nodes) == list(theirs_bucket.nodes_to_peer_id)
    for _ in range(50):
        target = rng.getrandbits(160)
        expected = theirs.get_nearest_neighbors(routing.DHTID(target), k=bucket_size)
        assert ours.nearest(target, bucket_size) == [address for _, address in expected]
