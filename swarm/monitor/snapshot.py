"""The monitor's picture of the swarm, built from raw DHT records. Pure: no I/O, no clock.

Input (`Observations`) is what a client reads from the DHT, still as signed-and-verified but
*undecoded* values, so that every judgement about remote data is made here, where it is
tested: the `ModelEntry` values under `MODELS_KEY`, and per model and block the
`PeerAnnouncement` values under `block_key(model, block)`, plus what the monitor measured
itself (RTTs, when each peer last answered, the load each one reported when probed) and the
wall-clock time.

Rules:
- A model's length is the `num_blocks` most of its live entries agree on (ties: the larger),
  so one peer announcing nonsense cannot shrink or stretch a model.
- A record counts only if it has not expired, decodes, names the model and a span that
  contains the block it is stored under and fits the model, and its address carries the
  same peer id as the subkey that signed it (nobody can advertise another peer's address).
  Anything else is counted in `skipped_records` and otherwise ignored.
- A peer appears under several block keys; its freshest record (latest expiration) wins. A
  peer whose freshest record says `offline` is gone from the picture at once.
- A peer that missed `UNREACHABLE_AFTER` pings of the monitor in a row is shown as
  `unreachable` whatever it announced, and covers nothing: a killed peer leaves the
  coverage within a few refreshes instead of when its records expire.
- A peer's sessions and cache tokens left are what it answered the monitor's last probe
  (its record may be a minute old); its record's, if it did not say. The tokens it serves
  per second are read from its counter of tokens served, in its last two answers.
- Only `online` peers cover blocks; `joining` peers are listed and counted apart. A full
  chain exists when every block has an online peer (spans are contiguous and a peer can
  serve any sub-range of its span, so covering every block is enough to chain them).
- Circuit relays are the live listings under `RELAYS_KEY` whose address is the signer's
  own and direct (`routing.relay_directory.listed_relay`); a relay is `unreachable` after
  `UNREACHABLE_AFTER` missed probes, like a peer. Its peers are the listed peers whose
  address is a circuit through it; its load (listeners, circuits) is what it answered the
  monitor's last probe.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from routing.announcement import ModelEntry, PeerAnnouncement, PeerState
from routing.errors import ProtocolError
from routing.records import DHTValue
from routing.relay_directory import listed_relay
from routing.rpc import RELAY_LOAD_FIELDS, RelayLoad
from security import PeerId

MAX_MODELS = 32  # models drawn (and read from the DHT); the most announced first
MAX_TEXT = 64  # peer-provided free text (version, dtype) is clipped to this many characters
UNREACHABLE_AFTER = 2  # pings missed in a row
UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class PeerLoad:
    """What a peer said of its load when the monitor probed it."""

    sessions: int
    cache_tokens_left: int
    served_tokens: int = 0  # its counter: positions its inference steps ran


@dataclass(frozen=True)
class RelayMeasure:
    """What the monitor measured of a relay: its last answer, and probes missed in a row."""

    rtt: float | None = None  # seconds; None: no answer to the last probe
    load: RelayLoad | None = None  # as it answered, if it did
    last_seen: float | None = None  # wall clock of its last answer
    missed: int = 0


@dataclass(frozen=True)
class Observations:
    """One round of reading the swarm: raw values per subkey, and our own measurements."""

    now: float  # wall-clock seconds, the time base of record expirations
    models: Mapping[PeerId, DHTValue]  # under MODELS_KEY
    blocks: Mapping[str, Mapping[int, Mapping[PeerId, DHTValue]]]  # model -> block -> records
    rtts: Mapping[PeerId, float | None] = field(default_factory=dict)  # None: no answer
    last_seen: Mapping[PeerId, float] = field(default_factory=dict)  # wall clock of last answer
    missed: Mapping[PeerId, int] = field(default_factory=dict)  # pings unanswered in a row
    loads: Mapping[PeerId, PeerLoad] = field(default_factory=dict)  # as probed, if they said
    serving: Mapping[PeerId, float] = field(default_factory=dict)  # tokens/s, between probes
    refresh: float = 2.0  # the collector's period, shown on the page
    relays: Mapping[PeerId, DHTValue] = field(default_factory=dict)  # under RELAYS_KEY
    relay_measures: Mapping[PeerId, RelayMeasure] = field(default_factory=dict)


@dataclass(frozen=True)
class BlockCoverage:
    peers: int  # online peers serving this block
    throughput: float  # their announced throughput, summed (tokens/s)
    joining: int  # peers still loading it


@dataclass(frozen=True)
class PeerRow:
    peer_id: PeerId
    address: str  # HOST:PORT/PEER_ID as announced
    start: int
    end: int  # exclusive
    state: str  # as announced (online, joining), or "unreachable" (see the module doc)
    throughput: float
    cache_tokens_left: int
    sessions: int
    version: str
    dtype: str
    expiration: float  # of its freshest record
    rtt: float | None  # seconds, measured by the monitor; None: unknown or unreachable
    last_seen: float | None  # wall clock of its last answer to our ping
    adapters: tuple[str, ...] = ()  # the LoRA adapters it runs (names checked on decoding)
    quantization: str = ""  # of its weights ("int8"), checked on decoding
    serving: float | None = None  # tokens/s its sessions ran lately (None: unknown)
    via: PeerId | None = None  # the relay it is reached through, if it serves behind a circuit

    def to_dict(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id.to_base58(),
            "short_id": self.peer_id.short(),
            "address": self.address,
            "start": self.start,
            "end": self.end,
            "state": self.state,
            "throughput": self.throughput,
            "cache_tokens_left": self.cache_tokens_left,
            "sessions": self.sessions,
            "version": self.version,
            "dtype": self.dtype,
            "expiration": self.expiration,
            "rtt": self.rtt,
            "last_seen": self.last_seen,
            "adapters": list(self.adapters),
            "quantization": self.quantization,
            "serving": self.serving,
            "via": None if self.via is None else self.via.to_base58(),
        }


@dataclass(frozen=True)
class ModelView:
    model: str
    num_blocks: int
    blocks: tuple[BlockCoverage, ...]
    peers: tuple[PeerRow, ...]  # sorted by span, then peer id

    @property
    def gaps(self) -> tuple[tuple[int, int], ...]:
        """Maximal runs of blocks without an online peer, as [start, end) pairs."""
        gaps: list[tuple[int, int]] = []
        for index, block in enumerate(self.blocks):
            if block.peers:
                continue
            if gaps and gaps[-1][1] == index:
                gaps[-1] = (gaps[-1][0], index + 1)
            else:
                gaps.append((index, index + 1))
        return tuple(gaps)

    @property
    def full_chain(self) -> bool:
        return all(block.peers for block in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "num_blocks": self.num_blocks,
            "full_chain": self.full_chain,
            "gaps": [list(gap) for gap in self.gaps],
            "blocks": [
                {"peers": b.peers, "throughput": b.throughput, "joining": b.joining}
                for b in self.blocks
            ],
            "peers": [peer.to_dict() for peer in self.peers],
        }


@dataclass(frozen=True)
class RelayRow:
    peer_id: PeerId
    address: str  # HOST:PORT/RELAY_ID as listed
    state: str  # online, or "unreachable" (see the module doc)
    expiration: float  # of its listing
    peers: int  # listed peers whose address is a circuit through it
    rtt: float | None  # seconds, measured by the monitor; None: unknown or unreachable
    last_seen: float | None  # wall clock of its last answer to our probe
    load: RelayLoad | None  # as it answered our last probe

    def to_dict(self) -> dict[str, Any]:
        load = asdict(self.load) if self.load is not None else dict.fromkeys(RELAY_LOAD_FIELDS)
        return {
            "peer_id": self.peer_id.to_base58(),
            "short_id": self.peer_id.short(),
            "address": self.address,
            "state": self.state,
            "expiration": self.expiration,
            "peers": self.peers,
            "rtt": self.rtt,
            "last_seen": self.last_seen,
            **load,
        }


@dataclass(frozen=True)
class SwarmSnapshot:
    taken_at: float
    refresh: float
    models: tuple[ModelView, ...]  # sorted by name
    skipped_records: int  # malformed or inconsistent records that were ignored
    relays: tuple[RelayRow, ...] = ()  # sorted by address

    def model(self, name: str) -> ModelView | None:
        return next((view for view in self.models if view.model == name), None)

    def peer_addresses(self) -> dict[PeerId, str]:
        """Every listed peer and the address it announced (what the monitor pings)."""
        return {row.peer_id: row.address for view in self.models for row in view.peers}

    def relay_addresses(self) -> dict[PeerId, str]:
        """Every listed relay and its address (what the monitor probes)."""
        return {row.peer_id: row.address for row in self.relays}

    def to_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "refresh": self.refresh,
            "skipped_records": self.skipped_records,
            "models": [view.to_dict() for view in self.models],
            "relays": [row.to_dict() for row in self.relays],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)


def select_models(
    entries: Mapping[PeerId, DHTValue], now: float, limit: int = MAX_MODELS
) -> dict[str, int]:
    """Model name -> number of blocks, from the live entries under `MODELS_KEY`.

    The `limit` most announced models are kept (ties by name); for each, the number of blocks
    that most of its entries agree on (ties: the larger).
    """
    votes: dict[str, Counter[int]] = {}
    for value in entries.values():
        if not _live(value, now):
            continue
        try:
            entry = ModelEntry.decode(value.value)
        except ProtocolError:
            continue
        votes.setdefault(entry.model, Counter())[entry.num_blocks] += 1
    ranked = sorted(votes, key=lambda model: (-sum(votes[model].values()), model))[:limit]
    return {
        model: max(votes[model].items(), key=lambda item: (item[1], item[0]))[0] for model in ranked
    }


def build_snapshot(observations: Observations) -> SwarmSnapshot:
    """The swarm as the page shows it; see the module docstring for the rules."""
    now = observations.now
    skipped = 0
    views = []
    for model, num_blocks in sorted(select_models(observations.models, now).items()):
        freshest: dict[PeerId, tuple[float, PeerAnnouncement]] = {}
        records = observations.blocks.get(model, {})
        for block, by_peer in records.items():
            for peer_id, value in by_peer.items():
                if not _live(value, now):
                    continue
                announcement = _valid(value, peer_id, model, block, num_blocks)
                if announcement is None:
                    skipped += 1
                    continue
                old = freshest.get(peer_id)
                if old is None or old[0] < value.expiration:
                    freshest[peer_id] = (value.expiration, announcement)
        rows = [
            _row(peer_id, expiration, announcement, observations)
            for peer_id, (expiration, announcement) in freshest.items()
            if announcement.state is not PeerState.OFFLINE
        ]
        rows.sort(key=lambda row: (row.start, row.end, row.peer_id))
        views.append(ModelView(model, num_blocks, _coverage(num_blocks, rows), tuple(rows)))
    relays, bad_listings = _relays(observations, views)
    return SwarmSnapshot(now, observations.refresh, tuple(views), skipped + bad_listings, relays)


def _live(value: DHTValue, now: float) -> bool:
    """Not expired (a non-finite expiration, which no DHT node should accept, is not live)."""
    return math.isfinite(value.expiration) and value.expiration > now


def _valid(
    value: DHTValue, peer_id: PeerId, model: str, block: int, num_blocks: int
) -> PeerAnnouncement | None:
    try:
        announcement = PeerAnnouncement.decode(value.value)
    except ProtocolError:
        return None
    if (
        announcement.model != model
        or block not in announcement.blocks
        or announcement.end > num_blocks
        or announcement.address.peer_id != peer_id
    ):
        return None
    return announcement


def _row(
    peer_id: PeerId, expiration: float, announcement: PeerAnnouncement, observations: Observations
) -> PeerRow:
    announced = PeerLoad(announcement.sessions, announcement.cache_tokens_left)
    load = observations.loads.get(peer_id, announced)
    return PeerRow(
        peer_id=peer_id,
        address=str(announcement.address),
        start=announcement.start,
        end=announcement.end,
        state=_state(peer_id, announcement, observations),
        throughput=announcement.throughput,
        cache_tokens_left=load.cache_tokens_left,
        sessions=load.sessions,
        version=announcement.version[:MAX_TEXT],
        dtype=announcement.dtype[:MAX_TEXT],
        expiration=expiration,
        rtt=observations.rtts.get(peer_id),
        last_seen=observations.last_seen.get(peer_id),
        adapters=announcement.adapters,
        quantization=announcement.quantization,
        serving=observations.serving.get(peer_id),
        via=announcement.address.via,
    )


def _relays(
    observations: Observations, views: Iterable[ModelView]
) -> tuple[tuple[RelayRow, ...], int]:
    """The listed relays, sorted by address, and how many live listings were invalid."""
    circuits = {(row.via, row.peer_id) for view in views for row in view.peers if row.via}
    peers = Counter(relay for relay, _ in circuits)
    rows, invalid = [], 0
    for relay_id, value in observations.relays.items():
        if not _live(value, observations.now):
            continue
        address = listed_relay(relay_id, value.value)
        if address is None:
            invalid += 1
            continue
        measure = observations.relay_measures.get(relay_id, RelayMeasure())
        rows.append(RelayRow(
            peer_id=relay_id,
            address=str(address),
            state=UNREACHABLE if measure.missed >= UNREACHABLE_AFTER else PeerState.ONLINE.value,
            expiration=value.expiration,
            peers=peers[relay_id],
            rtt=measure.rtt,
            last_seen=measure.last_seen,
            load=measure.load,
        ))  # fmt: skip
    rows.sort(key=lambda row: (row.address, row.peer_id))
    return tuple(rows), invalid


def _state(peer_id: PeerId, announcement: PeerAnnouncement, observations: Observations) -> str:
    if observations.missed.get(peer_id, 0) >= UNREACHABLE_AFTER:
        return UNREACHABLE
    return announcement.state.value


def _coverage(num_blocks: int, rows: Iterable[PeerRow]) -> tuple[BlockCoverage, ...]:
    peers = [0] * num_blocks
    throughput = [0.0] * num_blocks
    joining = [0] * num_blocks
    for row in rows:
        for block in range(row.start, row.end):
            if row.state == PeerState.ONLINE.value:
                peers[block] += 1
                throughput[block] += row.throughput
            elif row.state == PeerState.JOINING.value:
                joining[block] += 1
    return tuple(BlockCoverage(peers[i], throughput[i], joining[i]) for i in range(num_blocks))
