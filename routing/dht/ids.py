"""Kademlia node ids and key ids: 160-bit integers compared by XOR distance.

A node's id is derived from its authenticated peer id (SHA-1 of the peer id digest), so a
node cannot choose where it sits in the id space; a key's id is SHA-1 of the key's UTF-8
bytes. The values are identical to `hivemind.dht.routing.DHTID.generate(source=...)` for the
same bytes (a test checks this against hivemind), but we keep them as plain ints here:
importing any `hivemind` submodule runs `hivemind/__init__`, which imports torch (about 3 s),
and the DHT core must start in milliseconds.
"""

from __future__ import annotations

import hashlib
import random
from functools import lru_cache

from security import PeerId

ID_BITS = 160
ID_BYTES = ID_BITS // 8
MAX_ID = 1 << ID_BITS


@lru_cache(maxsize=65536)
def node_id_of(peer_id: PeerId) -> int:
    """The node id of a peer: fixed by its identity key, never taken from a message."""
    return int.from_bytes(hashlib.sha1(peer_id.digest).digest(), "big")


def key_id(key: str) -> int:
    """Where a key lives in the id space."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest(), "big")


def distance(a: int, b: int) -> int:
    return a ^ b


def id_to_bytes(node_id: int) -> bytes:
    return node_id.to_bytes(ID_BYTES, "big")


def random_id_in(lower: int, upper: int, rng: random.Random) -> int:
    """A uniformly random id in [lower, upper), to refresh the bucket covering that range."""
    return rng.randrange(lower, upper)
