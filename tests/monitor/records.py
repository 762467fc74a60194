"""Builders of the DHT records a monitor reads: real identities, real encodings."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from routing.address import PeerAddress
from routing.announcement import ModelEntry, PeerAnnouncement, PeerState
from routing.records import DHTValue
from security import Identity, PeerId

NOW = 1_700_000_000.0
TTL = 60.0

Blocks = dict[str, dict[int, dict[PeerId, DHTValue]]]


def announcement(
    peer_id: PeerId,
    model: str,
    start: int,
    end: int,
    *,
    state: PeerState = PeerState.ONLINE,
    throughput: float = 100.0,
    port: int = 4000,
    version: str = "0.1.0",
    adapters: tuple[str, ...] = (),
) -> PeerAnnouncement:
    return PeerAnnouncement(
        address=PeerAddress("10.0.0.7", port, peer_id),
        model=model,
        start=start,
        end=end,
        state=state,
        throughput=throughput,
        cache_tokens_left=4096,
        sessions=1,
        dtype="bfloat16",
        version=version,
        adapters=adapters,
    )


@dataclass
class SwarmRecords:
    """What the DHT would hold: model entries, per-block records and relay listings, by
    subkey."""

    models: dict[PeerId, DHTValue] = field(default_factory=dict)
    blocks: Blocks = field(default_factory=dict)
    relays: dict[PeerId, DHTValue] = field(default_factory=dict)

    def add_model(self, model: str, num_blocks: int, *, expiration: float = NOW + TTL) -> PeerId:
        """A model entry from a fresh peer (returned)."""
        peer_id = Identity.generate().peer_id
        self.models[peer_id] = DHTValue(ModelEntry(model, num_blocks).encode(), expiration)
        return peer_id

    def add_relay(self, port: int = 4100, *, expiration: float = NOW + TTL) -> PeerId:
        """A fresh relay listing its own address, 10.0.0.9:`port` (returned: its id)."""
        relay = Identity.generate().peer_id
        listing = str(PeerAddress("10.0.0.9", port, relay)).encode()
        self.relays[relay] = DHTValue(listing, expiration)
        return relay

    def behind(self, relay: PeerId, model: str, start: int, end: int) -> PeerId:
        """A fresh peer announcing [start, end) of `model` through a circuit of `relay`."""
        peer_id = Identity.generate().peer_id
        circuit = PeerAddress("10.0.0.9", 4100, peer_id, relay)
        self.announce(replace(announcement(peer_id, model, start, end), address=circuit))
        return peer_id

    def announce(
        self,
        record: PeerAnnouncement,
        *,
        expiration: float = NOW + TTL,
        blocks: range | None = None,
    ) -> None:
        """Store `record` under each block key of its span (or of `blocks`)."""
        peer_id = record.address.peer_id
        for block in blocks if blocks is not None else record.blocks:
            self.put(record.model, block, peer_id, DHTValue(record.encode(), expiration))

    def put(self, model: str, block: int, peer_id: PeerId, value: DHTValue) -> None:
        self.blocks.setdefault(model, {}).setdefault(block, {})[peer_id] = value

    def peer(
        self,
        model: str,
        start: int,
        end: int,
        *,
        state: PeerState = PeerState.ONLINE,
        throughput: float = 100.0,
        version: str = "0.1.0",
        expiration: float = NOW + TTL,
        adapters: tuple[str, ...] = (),
    ) -> PeerId:
        """A fresh peer announcing [start, end) of `model`; returns its id."""
        peer_id = Identity.generate().peer_id
        record = announcement(
            peer_id, model, start, end, state=state, throughput=throughput, version=version,
            adapters=adapters,
        )  # fmt: skip
        self.announce(record, expiration=expiration)
        return peer_id
