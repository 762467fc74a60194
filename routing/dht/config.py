"""DHT settings: Kademlia parameters, caps, timers. One frozen dataclass, sane defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..records import RecordPolicy


@dataclass(frozen=True)
class DHTConfig:
    k: int = 20  # bucket size and replication factor
    alpha: int = 3  # concurrent queries per lookup
    depth_modulo: int = 5  # Kademlia's b: distant buckets may split too (paper, 4.2)
    records: RecordPolicy = field(default_factory=RecordPolicy)
    max_stored_records: int = 100_000  # per node, all keys together
    max_subkeys_per_key: int = 1024
    max_records_per_reply: int = 256  # freshest first
    max_nodes_per_reply: int = 20  # a reply naming more nodes is malformed
    get_quorum: int = 3  # a get stops once this many nodes returned records (0: never early)
    store_rate: float = 20.0  # stores per second per remote peer (token bucket)
    store_burst: float = 200.0
    request_timeout: float = 5.0
    bootstrap_timeout: float = 30.0
    refresh_interval: float = 600.0  # refresh buckets not looked into for this long
    maintenance_interval: float = 60.0  # how often we check for stale buckets
    republish_fraction: float = 0.5  # own records are re-signed and stored at this part of ttl
    client_mode: bool = False  # True: never announce our address (we do not serve)

    def __post_init__(self) -> None:
        if self.k < 1 or self.alpha < 1 or self.max_nodes_per_reply < self.k:
            raise ValueError("invalid Kademlia parameters")
        if not 0 < self.republish_fraction < 1:
            raise ValueError("republish_fraction must be in (0, 1)")
