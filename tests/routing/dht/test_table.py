"""The routing table: buckets, splitting, eviction candidates, nearest nodes."""

from __future__ import annotations

import random

from routing.dht.ids import MAX_ID, node_id_of
from routing.dht.table import RoutingTable

from .helpers import random_address


def test_nearest_matches_brute_force_and_excludes_self() -> None:
    rng = random.Random(1)
    table = RoutingTable(rng.randrange(MAX_ID), bucket_size=20)
    addresses = [random_address(rng) for _ in range(500)]
    for address in addresses:
        table.update(address, now=0.0)
    kept = list(table)
    assert 100 < len(kept) < 500  # far buckets filled up, near ones split
    for _ in range(50):
        target = rng.randrange(MAX_ID)
        expected = sorted(kept, key=lambda a: node_id_of(a.peer_id) ^ target)[:20]
        assert table.nearest(target, 20) == expected
    own = addresses[0]
    own_table = RoutingTable(node_id_of(own.peer_id))
    assert own_table.update(own, now=0.0) is None
    assert len(own_table) == 0


def test_buckets_cover_the_space_and_hold_at_most_k() -> None:
    rng = random.Random(2)
    table = RoutingTable(rng.randrange(MAX_ID), bucket_size=8, depth_modulo=1)
    for _ in range(300):
        table.update(random_address(rng), now=0.0)
    assert table.buckets[0].lower == 0 and table.buckets[-1].upper == MAX_ID
    for left, right in zip(table.buckets, table.buckets[1:], strict=False):
        assert left.upper == right.lower
    for bucket in table.buckets:
        assert len(bucket.nodes) <= 8
        assert all(bucket.covers(node_id) for node_id in bucket.nodes)
        assert all(bucket.covers(node_id) for node_id in bucket.replacements)


def test_unsplittable_full_bucket_evicts_only_after_failed_ping() -> None:
    rng = random.Random(4)
    own_id = 0
    table = RoutingTable(own_id, bucket_size=2, depth_modulo=1)  # depth % 1 == 0: no extra split
    far = [a for a in (random_address(rng) for _ in range(200)) if node_id_of(a.peer_id) >> 159]
    first, second, third = far[:3]
    assert table.update(first, now=0.0) is None
    assert table.update(second, now=0.0) is None
    to_ping = table.update(third, now=0.0)
    assert to_ping == first  # least recently seen
    table.update(first, now=1.0)  # it answered: it stays, moves to the tail
    assert node_id_of(third.peer_id) not in table
    assert table.update(third, now=2.0) == second
    table.remove(node_id_of(second.peer_id))  # it did not answer
    assert {node_id_of(a.peer_id) for a in table} == {
        node_id_of(first.peer_id),
        node_id_of(third.peer_id),
    }


def test_stale_buckets_and_refresh() -> None:
    rng = random.Random(5)
    table = RoutingTable(rng.randrange(MAX_ID), bucket_size=4, now=0.0)
    for _ in range(40):
        table.update(random_address(rng), now=0.0)
    assert table.stale_buckets(now=100.0, max_age=200.0) == []
    stale = table.stale_buckets(now=300.0, max_age=200.0)
    assert stale == table.buckets
    table.mark_refreshed(stale[0].lower, now=300.0)
    assert table.stale_buckets(now=300.0, max_age=200.0) == table.buckets[1:]
