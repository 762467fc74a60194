"""The pure iterative lookup, driven by hand over a simulated network of routing tables."""

from __future__ import annotations

import math
import random
from collections import deque

from routing.address import PeerAddress
from routing.dht.ids import MAX_ID, node_id_of
from routing.dht.lookup import Lookup
from routing.dht.table import RoutingTable

from .helpers import random_address

K = 8


def _network(rng: random.Random, size: int) -> dict[PeerAddress, RoutingTable]:
    """A converged network: every node saw every other (its buckets kept what they could)."""
    addresses = [random_address(rng) for _ in range(size)]
    tables = {}
    for address in addresses:
        table = RoutingTable(node_id_of(address.peer_id), bucket_size=K)
        for other in rng.sample(addresses, size):
            table.update(other, now=0.0)
        tables[address] = table
    return tables


def _run(lookup: Lookup, tables: dict[PeerAddress, RoutingTable], dead: set[PeerAddress]) -> int:
    """Answer queries in the order they were sent; returns the most queries ever in flight."""
    pending: deque[PeerAddress] = deque()
    most = 0
    while not lookup.done:
        pending.extend(lookup.next_queries())
        most = max(most, lookup.in_flight)
        assert pending, "not done, nothing in flight: the lookup is stuck"
        peer = pending.popleft()
        if peer in dead:
            lookup.on_failure(peer)
        else:
            lookup.on_reply(peer, tables[peer].nearest(lookup.target, K))
    return most


def test_lookup_finds_the_true_nearest_nodes_in_few_hops() -> None:
    rng = random.Random(10)
    tables = _network(rng, 300)
    everyone = list(tables)
    hops = []
    for start in rng.sample(everyone, 20):
        target = rng.randrange(MAX_ID)
        table = tables[start]
        lookup = Lookup(target, table.nearest(target, K), own_id=table.own_id, k=K, alpha=3)
        assert _run(lookup, tables, dead=set()) <= 3
        others = [a for a in everyone if a != start]
        expected = sorted(others, key=lambda a: node_id_of(a.peer_id) ^ target)[:K]
        assert lookup.closest() == expected
        hops.append(lookup.hops)
    assert max(hops) <= 2 * math.log2(len(everyone)) + 2
    assert lookup.queries < 6 * K


def test_lookup_routes_around_failed_nodes() -> None:
    rng = random.Random(11)
    tables = _network(rng, 200)
    everyone = list(tables)
    dead = set(rng.sample(everyone, 60))
    alive = [a for a in everyone if a not in dead]
    failures = 0
    for start in rng.sample(alive, 10):
        target = rng.randrange(MAX_ID)
        lookup = Lookup(target, tables[start].nearest(target, K), own_id=tables[start].own_id, k=K)
        _run(lookup, tables, dead)
        # the nodes just died: tables still name them, so the lookup asks them, sees them
        # fail, and must still find every live node among the true K nearest
        others = [a for a in everyone if a != start]
        nearest = sorted(others, key=lambda a: node_id_of(a.peer_id) ^ target)[:K]
        found = lookup.closest()
        assert not dead & set(found)
        assert [a for a in nearest if a not in dead] == found[: K - len(dead & set(nearest))]
        failures += len(dead & set(nearest))
    assert failures > 5  # the scenario did exercise failures


def test_stop_ends_the_lookup_and_stray_replies_are_ignored() -> None:
    rng = random.Random(12)
    seeds = [random_address(rng) for _ in range(10)]
    lookup = Lookup(rng.randrange(MAX_ID), seeds, own_id=0, k=K, alpha=3)
    first = lookup.next_queries()
    assert len(first) == 3 and lookup.in_flight == 3
    assert lookup.next_queries() == []  # alpha reached
    unasked = next(seed for seed in seeds if seed not in first)
    lookup.on_reply(unasked, [random_address(rng)])  # not asked: changes nothing
    lookup.on_reply(random_address(rng), [])  # a stranger: changes nothing
    assert lookup.in_flight == 3
    lookup.on_failure(first[0])
    lookup.on_failure(first[0])  # twice: counted once
    assert lookup.in_flight == 2
    assert not lookup.done
    lookup.stop()
    assert lookup.done and lookup.next_queries() == []


def test_no_seeds_is_done_at_once_and_own_id_is_never_a_candidate() -> None:
    rng = random.Random(13)
    me = random_address(rng)
    lookup = Lookup(5, [me], own_id=node_id_of(me.peer_id))
    assert lookup.done and lookup.closest() == [] and lookup.hops == 0
