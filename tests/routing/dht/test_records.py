"""Signed records: what verifies, and every way a record is refused."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from routing.records import (
    RECORD_DOMAIN,
    RecordPolicy,
    RecordRejectedError,
    SignedRecord,
    signing_payload,
    verify_record,
)
from security import Identity, verify_signature

POLICY = RecordPolicy(max_value_bytes=100, max_ttl=600.0, max_clock_skew=5.0)
NOW = 1_700_000_000.0


@pytest.fixture(scope="module")
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture(scope="module")
def mallory() -> Identity:
    return Identity.generate()


def _rejected(record: SignedRecord, reason: str, *, now: float = NOW) -> None:
    with pytest.raises(RecordRejectedError, match=reason) as caught:
        verify_record(record, now=now, policy=POLICY)
    assert caught.value.reason


def test_a_signed_record_verifies_and_round_trips(alice: Identity) -> None:
    record = SignedRecord.create(alice, "model.3", b"hello", NOW + 60)
    assert record.subkey == alice.peer_id
    verify_record(record, now=NOW, policy=POLICY)
    again = SignedRecord.from_wire(
        "model.3", msgpack.unpackb(msgpack.packb(record.to_wire())), POLICY
    )
    assert again == record
    verify_record(again, now=NOW, policy=POLICY)
    assert record.to_value().value == b"hello" and record.to_value().expiration == NOW + 60


def test_signature_covers_a_domain_separated_payload(alice: Identity) -> None:
    """Checked with the library's verifier on a payload built by hand, not by our helper."""
    record = SignedRecord.create(alice, "k", b"v", NOW + 1)
    by_hand = msgpack.packb([RECORD_DOMAIN, "k", alice.peer_id.digest, b"v", NOW + 1])
    assert signing_payload("k", alice.peer_id, b"v", NOW + 1) == by_hand
    verify_signature(alice.public_key, record.signature, by_hand)
    assert RECORD_DOMAIN.startswith("swarm/dht-record/")


def test_forged_records_are_refused(alice: Identity, mallory: Identity) -> None:
    genuine = SignedRecord.create(alice, "k", b"v", NOW + 60)
    # mallory signs a record and claims alice's subkey, with her own key...
    forged = dataclasses.replace(
        SignedRecord.create(mallory, "k", b"v", NOW + 60), subkey=alice.peer_id
    )
    _rejected(forged, "subkey is not the peer id")
    # ...or with alice's public key but her own signature
    _rejected(dataclasses.replace(forged, public_key=alice.public_key), "bad signature")
    # every signed field is covered
    _rejected(dataclasses.replace(genuine, key="other"), "bad signature")
    _rejected(dataclasses.replace(genuine, value=b"w"), "bad signature")
    _rejected(dataclasses.replace(genuine, expiration=NOW + 61), "bad signature")
    _rejected(dataclasses.replace(genuine, subkey=mallory.peer_id), "subkey is not")


def test_size_and_time_bounds(alice: Identity) -> None:
    _rejected(SignedRecord.create(alice, "k", b"x" * 101, NOW + 60), "over 100")
    _rejected(SignedRecord.create(alice, "k", b"v", NOW + 700), "ahead")
    _rejected(SignedRecord.create(alice, "k", b"v", NOW - 1), "expired")
    _rejected(SignedRecord.create(alice, "k", b"v", float("inf")), "not finite")
    _rejected(SignedRecord.create(alice, "k" * 300, b"v", NOW + 60), "key longer")
    _rejected(SignedRecord.create(alice, "", b"v", NOW + 60), "non-empty")
    verify_record(SignedRecord.create(alice, "k", b"v", NOW + 604), now=NOW, policy=POLICY)


@pytest.mark.parametrize(
    "item",
    [
        None,
        [],
        [b"x" * 32, b"v", 1.0, b"x" * 32],
        ["not bytes", b"v", 1.0, b"x" * 32, b"s" * 64],
        [b"x" * 32, b"v", "soon", b"x" * 32, b"s" * 64],
        [b"x" * 32, b"v", True, b"x" * 32, b"s" * 64],
        [b"x" * 31, b"v", 1.0, b"x" * 32, b"s" * 64],
        [b"x" * 32, b"v", 1.0, b"x" * 32, b"s" * 63],
        [b"x" * 32, b"v" * 101, 1.0, b"x" * 32, b"s" * 64],
    ],
)
def test_malformed_wire_records_are_refused(item: object) -> None:
    with pytest.raises(RecordRejectedError):
        SignedRecord.from_wire("k", item, POLICY)
