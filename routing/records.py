"""Signed swarm records: the envelope of every value in the DHT. Pure: no I/O, no clock.

A record says "under `key`, the peer `subkey` publishes `value` until `expiration`". It
carries the publisher's Ed25519 public key and its signature over
`msgpack([RECORD_DOMAIN, key, subkey digest, value, expiration])`; the domain string keeps
a record signature from ever being valid as anything else (a handshake, another protocol
version). A record is accepted only if the public key hashes to `subkey` and the signature
verifies, so a peer can write its own subkey and nobody else's. Expiration is absolute
wall-clock time (seconds since the epoch, like `time.time()`), bounded ahead of `now`;
values and keys are size-capped. Every refusal is a `RecordRejectedError` with a reason.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, cast

import msgpack

from security import Identity, PeerId, SecurityError, verify_signature

from .errors import RoutingError

RECORD_DOMAIN = "swarm/dht-record/v1"


class RecordRejectedError(RoutingError):
    """A record that we refuse to store or return; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RecordPolicy:
    """What a node accepts. `max_ttl` bounds expiration ahead of now (plus clock skew)."""

    max_key_bytes: int = 256
    max_value_bytes: int = 4096
    max_ttl: float = 600.0
    max_clock_skew: float = 5.0


@dataclass(frozen=True)
class DHTValue:
    """What a `get` returns per subkey: the verified value and when it expires."""

    value: bytes
    expiration: float


@dataclass(frozen=True)
class SignedRecord:
    key: str
    subkey: PeerId
    value: bytes
    expiration: float
    public_key: bytes
    signature: bytes

    @classmethod
    def create(cls, identity: Identity, key: str, value: bytes, expiration: float) -> SignedRecord:
        """Sign `value` under `key` with `identity` (the subkey is its peer id)."""
        expiration = float(expiration)
        payload = signing_payload(key, identity.peer_id, value, expiration)
        return cls(
            key,
            identity.peer_id,
            bytes(value),
            expiration,
            identity.public_key,
            identity.sign(payload),
        )

    def to_value(self) -> DHTValue:
        return DHTValue(self.value, self.expiration)

    def to_wire(self) -> list[Any]:
        """The msgpack-able form sent in DHT messages (the key travels beside it)."""
        return [self.subkey.digest, self.value, self.expiration, self.public_key, self.signature]

    @classmethod
    def from_wire(cls, key: str, item: Any, policy: RecordPolicy) -> SignedRecord:
        """Parse (not verify) a record from a message: types and sizes only."""
        if not isinstance(item, (list, tuple)) or len(item) != 5:
            raise RecordRejectedError("a record is a list of 5 fields")
        subkey, value, expiration, public_key, signature = item
        if not all(isinstance(field, bytes) for field in (subkey, value, public_key, signature)):
            raise RecordRejectedError("record fields have the wrong types")
        if isinstance(expiration, bool) or not isinstance(expiration, (int, float)):
            raise RecordRejectedError("record expiration is not a number")
        if len(value) > policy.max_value_bytes:
            raise RecordRejectedError(f"value of {len(value)} bytes over {policy.max_value_bytes}")
        if len(subkey) != 32 or len(public_key) != 32 or len(signature) != 64:
            raise RecordRejectedError("record subkey, key or signature has the wrong size")
        return cls(key, PeerId(subkey), value, float(expiration), public_key, signature)


def signing_payload(key: str, subkey: PeerId, value: bytes, expiration: float) -> bytes:
    """The bytes a record signature covers: domain, key, subkey, value, expiration."""
    fields = [RECORD_DOMAIN, key, subkey.digest, bytes(value), float(expiration)]
    return cast(bytes, msgpack.packb(fields, use_bin_type=True))


def check_key(key: str, policy: RecordPolicy) -> None:
    if not isinstance(key, str) or not key:
        raise RecordRejectedError("a key is a non-empty string")
    if len(key.encode("utf-8", "surrogatepass")) > policy.max_key_bytes:
        raise RecordRejectedError(f"key longer than {policy.max_key_bytes} bytes")


class VerifiedRecords:
    """The last `capacity` records whose signature verified.

    A get hears the same record from up to k replicas; with this, it costs one Ed25519
    verification instead of k. Only the signature is remembered: time and size bounds are
    checked on every use.
    """

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._records: OrderedDict[SignedRecord, None] = OrderedDict()

    def __contains__(self, record: SignedRecord) -> bool:
        if record in self._records:
            self._records.move_to_end(record)
            return True
        return False

    def add(self, record: SignedRecord) -> None:
        self._records[record] = None
        while len(self._records) > self.capacity:
            self._records.popitem(last=False)


def verify_record(
    record: SignedRecord,
    *,
    now: float,
    policy: RecordPolicy,
    verified: VerifiedRecords | None = None,
) -> None:
    """Accept a record or raise `RecordRejectedError`; cheap checks come before the signature."""
    check_key(record.key, policy)
    if len(record.value) > policy.max_value_bytes:
        raise RecordRejectedError(
            f"value of {len(record.value)} bytes over {policy.max_value_bytes}"
        )
    if not math.isfinite(record.expiration):
        raise RecordRejectedError("expiration is not finite")
    if record.expiration <= now:
        raise RecordRejectedError("record expired")
    if record.expiration > now + policy.max_ttl + policy.max_clock_skew:
        raise RecordRejectedError(
            f"expiration {record.expiration - now:.0f} s ahead, over {policy.max_ttl:.0f} s"
        )
    if verified is not None and record in verified:
        return
    try:
        if PeerId.from_public_key(record.public_key) != record.subkey:
            raise RecordRejectedError("subkey is not the peer id of the signing key")
        payload = signing_payload(record.key, record.subkey, record.value, record.expiration)
        verify_signature(record.public_key, record.signature, payload)
    except SecurityError as error:
        raise RecordRejectedError(f"bad signature: {error}") from None
    if verified is not None:
        verified.add(record)
