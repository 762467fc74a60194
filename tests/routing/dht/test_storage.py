"""Record storage (merge, expiry, eviction) and the per-peer rate limiter."""

from __future__ import annotations

import pytest

from routing.dht.ratelimit import RateLimiter
from routing.dht.storage import RecordStorage
from routing.records import SignedRecord
from security import Identity


@pytest.fixture(scope="module")
def identities() -> list[Identity]:
    return [Identity.generate() for _ in range(4)]


def _record(identity: Identity, key: str, value: bytes, expiration: float) -> SignedRecord:
    return SignedRecord.create(identity, key, value, expiration)


def test_store_merges_subkeys_and_keeps_the_freshest(identities: list[Identity]) -> None:
    alice, bob = identities[:2]
    storage = RecordStorage(max_records=10, max_subkeys_per_key=10)
    assert storage.store(_record(alice, "m.0", b"a1", 100.0), now=0.0)
    assert storage.store(_record(bob, "m.0", b"b1", 50.0), now=0.0)
    assert not storage.store(_record(alice, "m.0", b"old", 90.0), now=0.0)  # older: refused
    assert storage.store(_record(alice, "m.0", b"a2", 120.0), now=0.0)
    got = storage.get("m.0", now=10.0)
    assert {peer: record.value for peer, record in got.items()} == {
        alice.peer_id: b"a2",
        bob.peer_id: b"b1",
    }
    assert len(storage) == 2
    assert set(storage.get("m.0", now=60.0)) == {alice.peer_id}  # bob's expired
    assert storage.get("m.0", now=130.0) == {}
    assert len(storage) == 0
    assert not storage.store(_record(bob, "m.1", b"late", 5.0), now=10.0)  # already expired


def test_full_storage_evicts_the_soonest_to_expire(identities: list[Identity]) -> None:
    storage = RecordStorage(max_records=3, max_subkeys_per_key=10)
    for index, identity in enumerate(identities[:3]):
        assert storage.store(_record(identity, f"k{index}", b"v", 100.0 + index), now=0.0)
    # a newcomer expiring sooner than everything is refused...
    assert not storage.store(_record(identities[3], "k3", b"v", 50.0), now=0.0)
    # ...one expiring later replaces the soonest (k0 at 100)
    assert storage.store(_record(identities[3], "k3", b"v", 200.0), now=0.0)
    assert len(storage) == 3
    assert storage.get("k0", now=0.0) == {}
    assert set(storage.keys()) == {"k1", "k2", "k3"}


def test_subkeys_per_key_are_capped(identities: list[Identity]) -> None:
    storage = RecordStorage(max_records=100, max_subkeys_per_key=2)
    storage.store(_record(identities[0], "k", b"v", 10.0), now=0.0)
    storage.store(_record(identities[1], "k", b"v", 20.0), now=0.0)
    assert not storage.store(_record(identities[2], "k", b"v", 5.0), now=0.0)
    assert storage.store(_record(identities[2], "k", b"v", 30.0), now=0.0)
    assert set(storage.get("k", now=0.0)) == {identities[1].peer_id, identities[2].peer_id}


def test_refreshing_one_record_does_not_grow_memory(identities: list[Identity]) -> None:
    storage = RecordStorage(max_records=10, max_subkeys_per_key=10)
    for step in range(1000):
        assert storage.store(_record(identities[0], "k", b"v", 1000.0 + step), now=0.0)
    assert len(storage) == 1
    assert len(storage._heap) < 200


def test_rate_limiter_refills_on_the_given_clock() -> None:
    limiter: RateLimiter[str] = RateLimiter(rate=2.0, burst=3.0, max_peers=2)
    assert [limiter.allow("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", now=0.0)  # another peer has its own bucket
    assert not limiter.allow("a", now=0.4)  # 0.8 tokens
    assert limiter.allow("a", now=0.5)  # 1.0 token (0.4 s refund not spent on refusal)
    assert not limiter.allow("a", now=0.5)
    assert [limiter.allow("a", now=100.0) for _ in range(4)] == [True, True, True, False]
    limiter.allow("c", now=100.0)
    assert len(limiter._buckets) == 2  # bounded: the least recent peer was forgotten
