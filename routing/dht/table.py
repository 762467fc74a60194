"""The Kademlia routing table: k-buckets over the 160-bit id space. Pure, no I/O, no clock.

Follows the paper (and hivemind's `RoutingTable`, whose splitting rule we copy so the two
agree, which a test checks): one bucket covers the whole space at first; a full bucket
splits when it covers our own id, or when its depth is not a multiple of `depth_modulo`
(section 4.2, so distant buckets can hold more than k nodes in total). A full bucket that
may not split keeps the newcomer as a replacement and names its least-recently-seen node:
the caller pings it, then calls `update` again (alive: it moves to the tail) or `remove`
(dead: the freshest replacement takes its place). Like ddht's table, the table returns the
node to ping instead of pinging it, so the network part stays outside.

Why not hivemind's own class: it stamps buckets with `time.time()` (our clock is injected,
and the tests run on trio's MockClock), it keeps unbounded replacement lists, and importing
it loads torch. Callers pass `now` where time matters.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..address import PeerAddress
from .ids import ID_BITS, MAX_ID, node_id_of


@dataclass
class KBucket:
    """Nodes whose ids lie in [lower, upper); least-recently-seen first."""

    lower: int
    upper: int
    depth: int
    last_refreshed: float
    nodes: OrderedDict[int, PeerAddress] = field(default_factory=OrderedDict)
    replacements: OrderedDict[int, PeerAddress] = field(default_factory=OrderedDict)

    def covers(self, node_id: int) -> bool:
        return self.lower <= node_id < self.upper


class RoutingTable:
    def __init__(
        self,
        own_id: int,
        *,
        bucket_size: int = 20,
        depth_modulo: int = 5,
        max_replacements: int = 20,
        now: float = 0.0,
    ) -> None:
        if bucket_size < 1 or depth_modulo < 1 or max_replacements < 0:
            raise ValueError("invalid routing table parameters")
        self.own_id = own_id
        self.bucket_size = bucket_size
        self.depth_modulo = depth_modulo
        self.max_replacements = max_replacements
        self.buckets = [KBucket(0, MAX_ID, 0, now)]

    def bucket_index(self, node_id: int) -> int:
        low, high = 0, len(self.buckets)
        while high - low > 1:  # buckets are sorted and contiguous
            middle = (low + high) // 2
            if node_id >= self.buckets[middle].lower:
                low = middle
            else:
                high = middle
        return low

    def bucket_of(self, node_id: int) -> KBucket:
        return self.buckets[self.bucket_index(node_id)]

    def update(self, address: PeerAddress, now: float) -> PeerAddress | None:
        """Record that `address` answered us or called us.

        Returns the least-recently-seen node of a full bucket that must be pinged before the
        newcomer (kept as a replacement) can take its place; None when nothing is needed.
        """
        node_id = node_id_of(address.peer_id)
        if node_id == self.own_id:
            return None
        while True:
            index = self.bucket_index(node_id)
            bucket = self.buckets[index]
            bucket.last_refreshed = now
            if node_id in bucket.nodes:
                del bucket.nodes[node_id]
                bucket.nodes[node_id] = address  # move to the tail: most recently seen
                return None
            if len(bucket.nodes) < self.bucket_size:
                bucket.replacements.pop(node_id, None)
                bucket.nodes[node_id] = address
                return None
            if bucket.covers(self.own_id) or bucket.depth % self.depth_modulo != 0:
                self._split(index, now)
                continue
            bucket.replacements.pop(node_id, None)
            bucket.replacements[node_id] = address
            while len(bucket.replacements) > self.max_replacements:
                bucket.replacements.popitem(last=False)
            return next(iter(bucket.nodes.values()))

    def remove(self, node_id: int) -> None:
        """Forget a node that failed; the freshest replacement takes its place."""
        bucket = self.bucket_of(node_id)
        bucket.replacements.pop(node_id, None)
        if bucket.nodes.pop(node_id, None) is not None and bucket.replacements:
            replacement_id, replacement = bucket.replacements.popitem(last=True)
            bucket.nodes[replacement_id] = replacement

    def _split(self, index: int, now: float) -> None:
        old = self.buckets[index]
        if old.depth >= ID_BITS:  # cannot happen with distinct ids; never loop forever
            raise RuntimeError("bucket too small to split")
        middle = (old.lower + old.upper) // 2
        left = KBucket(old.lower, middle, old.depth + 1, old.last_refreshed)
        right = KBucket(middle, old.upper, old.depth + 1, old.last_refreshed)
        for node_id, address in old.nodes.items():
            (left if node_id < middle else right).nodes[node_id] = address
        for node_id, address in old.replacements.items():
            half = left if node_id < middle else right
            if len(half.nodes) < self.bucket_size:
                half.nodes[node_id] = address
            else:
                half.replacements[node_id] = address
        self.buckets[index : index + 1] = [left, right]

    def get(self, node_id: int) -> PeerAddress | None:
        return self.bucket_of(node_id).nodes.get(node_id)

    def __contains__(self, node_id: int) -> bool:
        return node_id in self.bucket_of(node_id).nodes

    def __len__(self) -> int:
        return sum(len(bucket.nodes) for bucket in self.buckets)

    def __iter__(self) -> Iterator[PeerAddress]:
        for bucket in self.buckets:
            yield from bucket.nodes.values()

    def nearest(self, target: int, count: int, exclude: int | None = None) -> list[PeerAddress]:
        """The `count` known nodes closest to `target` by XOR distance, nearest first."""
        candidates = (
            (node_id ^ target, address)
            for bucket in self.buckets
            for node_id, address in bucket.nodes.items()
            if node_id != exclude
        )
        return [address for _, address in heapq.nsmallest(count, candidates, key=_first)]

    def stale_buckets(self, now: float, max_age: float) -> list[KBucket]:
        """Buckets nobody has looked into for `max_age`: refresh each by a lookup in its range."""
        return [bucket for bucket in self.buckets if now - bucket.last_refreshed >= max_age]

    def mark_refreshed(self, target: int, now: float) -> None:
        self.bucket_of(target).last_refreshed = now


def _first(item: tuple[int, PeerAddress]) -> int:
    return item[0]
