"""The monitor's trio side: read the DHT like a client, probe the peers, keep the latest picture.

Every `interval` seconds (half the page's refresh period), one round: read `MODELS_KEY`, then
the block keys of every model concurrently (a nursery, at most `max_concurrent_gets` lookups
in flight, each bounded by `get_timeout`), and publish a snapshot at once with the RTTs known
so far, so a peer that announced `offline` leaves the page on the next refresh. Then probe
every listed peer concurrently (`ping_timeout` each): its RTT, and its load now (sessions,
cache left, its counter of tokens served: the tokens per second since the last probe) if it
says, and publish the snapshot again with them. The circuit relays listed in the DHT are read
and probed in the same round (their RTT, and their load if they say). A failed read leaves
that key empty for the round; it never stops the collector.

The DHT and the prober are small protocols, so tests drive the collector with fakes and
trio's MockClock (the RPC prober is in `service.py`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import trio

from routing.address import PeerAddress
from routing.announcement import MODELS_KEY, block_key
from routing.errors import AddressError, RoutingError
from routing.records import DHTValue
from routing.relay_directory import RELAYS_KEY
from routing.rpc import RelayLoad
from security import PeerId, SecurityError

from .snapshot import (
    MAX_MODELS,
    Observations,
    PeerLoad,
    RelayMeasure,
    SwarmSnapshot,
    build_snapshot,
    select_models,
)

logger = logging.getLogger(__name__)


class DHTReader(Protocol):
    async def get(self, key: str) -> Mapping[PeerId, DHTValue]: ...


@dataclass(frozen=True)
class Probe:
    """A peer's answer to a probe: the round trip in seconds, and its load if it said."""

    rtt: float
    load: PeerLoad | None = None


class Prober(Protocol):
    async def __call__(self, address: PeerAddress) -> Probe | None:
        """What the peer answered, or None if it did not answer."""
        ...


@dataclass(frozen=True)
class RelayProbe:
    """A relay's answer to a probe: the round trip in seconds, and its load if it said."""

    rtt: float
    load: RelayLoad | None = None


class RelayProber(Protocol):
    async def __call__(self, address: PeerAddress) -> RelayProbe | None:
        """What the relay answered, or None if it did not answer."""
        ...


@dataclass(frozen=True)
class CollectorConfig:
    refresh: float = 2.0  # the page's default period; the DHT is read twice per period
    get_timeout: float = 5.0
    ping_timeout: float = 2.0
    max_concurrent_gets: int = 16
    max_models: int = MAX_MODELS

    def __post_init__(self) -> None:
        if not 0.2 <= self.refresh <= 3600:
            raise ValueError("refresh must be in [0.2, 3600] seconds")

    @property
    def interval(self) -> float:
        """Seconds between rounds: half the page's period, so that a change reaches the page
        within about one refresh (half a period to be read, at most one to be fetched)."""
        return self.refresh / 2


class Collector:
    def __init__(
        self,
        dht: DHTReader,
        probe: Prober,
        config: CollectorConfig | None = None,
        *,
        probe_relay: RelayProber | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.dht = dht
        self.probe = probe
        self.probe_relay = probe_relay  # None: relays are listed, not probed
        self.config = config or CollectorConfig()
        self._clock = clock
        self._snapshot: SwarmSnapshot | None = None
        self._rtts: dict[PeerId, float | None] = {}
        self._last_seen: dict[PeerId, float] = {}
        self._missed: dict[PeerId, int] = {}
        self._loads: dict[PeerId, PeerLoad] = {}
        self._counted: dict[PeerId, tuple[float, int]] = {}  # when, and its tokens served
        self._serving: dict[PeerId, float] = {}  # tokens/s between its last two answers
        self._relays: dict[PeerId, RelayMeasure] = {}
        self._limiter = trio.CapacityLimiter(self.config.max_concurrent_gets)
        self.rounds = 0  # completed rounds, for tests and logs

    def latest(self) -> SwarmSnapshot | None:
        """The newest snapshot (None before the first round finished reading)."""
        return self._snapshot

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Collect forever, a round every `interval`; `started` once the first snapshot exists."""
        next_round = trio.current_time()
        await self.collect_once()
        task_status.started()
        while True:
            # A round that overran starts the next one at once, without a burst to catch up.
            next_round = max(next_round + self.config.interval, trio.current_time())
            await trio.sleep_until(next_round)
            await self.collect_once()

    async def collect_once(self) -> SwarmSnapshot:
        observations = await self._read()
        self._snapshot = build_snapshot(self._with_measurements(observations))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._probe_all, self._snapshot.peer_addresses())
            nursery.start_soon(self._probe_relays, self._snapshot.relay_addresses())
        self._snapshot = build_snapshot(self._with_measurements(observations))
        self.rounds += 1
        return self._snapshot

    def _with_measurements(self, observations: Observations) -> Observations:
        return replace(
            observations,
            rtts=dict(self._rtts),
            last_seen=dict(self._last_seen),
            missed=dict(self._missed),
            loads=dict(self._loads),
            serving=dict(self._serving),
            relay_measures=dict(self._relays),
        )

    async def _read(self) -> Observations:
        relays: Mapping[PeerId, DHTValue] = {}

        async def read_relays() -> None:
            nonlocal relays
            relays = await self._get(RELAYS_KEY)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_relays)  # while the models are read
            models, blocks = await self._read_models()
        return Observations(
            now=self._clock(),
            models=models,
            blocks=blocks,
            refresh=self.config.refresh,
            relays=relays,
        )

    async def _read_models(
        self,
    ) -> tuple[Mapping[PeerId, DHTValue], dict[str, dict[int, Mapping[PeerId, DHTValue]]]]:
        """The entries under `MODELS_KEY`, and the records under each selected model's blocks."""
        models = await self._get(MODELS_KEY)
        selected = select_models(models, self._clock(), self.config.max_models)
        blocks: dict[str, dict[int, Mapping[PeerId, DHTValue]]] = {m: {} for m in selected}

        async def read_block(model: str, block: int) -> None:
            async with self._limiter:
                blocks[model][block] = await self._get(block_key(model, block))

        async with trio.open_nursery() as nursery:
            for model, num_blocks in selected.items():
                for block in range(num_blocks):
                    nursery.start_soon(read_block, model, block)
        return models, blocks

    async def _get(self, key: str) -> Mapping[PeerId, DHTValue]:
        with trio.move_on_after(self.config.get_timeout):
            try:
                return await self.dht.get(key)
            except (RoutingError, SecurityError) as error:
                logger.info("reading %r from the DHT failed: %s", key, error)
                return {}
        logger.info("reading %r from the DHT timed out", key)
        return {}

    async def _probe_all(self, addresses: Mapping[PeerId, str]) -> None:
        measures = (self._rtts, self._last_seen, self._missed, self._loads, self._counted,
                    self._serving)  # fmt: skip
        for measured in measures:
            for gone in set(measured) - set(addresses):
                del measured[gone]

        async def probe_one(peer_id: PeerId, text: str) -> None:
            try:
                address = PeerAddress.parse(text)
            except AddressError:
                return  # the snapshot only lists parsed addresses; defensive all the same
            probe = None
            with trio.move_on_after(self.config.ping_timeout):
                probe = await self.probe(address)
            self._rtts[peer_id] = None if probe is None else probe.rtt
            self._loads.pop(peer_id, None)
            self._serving.pop(peer_id, None)
            if probe is None:
                self._missed[peer_id] = self._missed.get(peer_id, 0) + 1
                return
            now = self._clock()
            self._last_seen[peer_id] = now
            self._missed[peer_id] = 0
            if probe.load is not None:
                self._loads[peer_id] = probe.load
                self._count_served(peer_id, now, probe.load.served_tokens)

        async with trio.open_nursery() as nursery:
            for peer_id, text in addresses.items():
                nursery.start_soon(probe_one, peer_id, text)

    async def _probe_relays(self, addresses: Mapping[PeerId, str]) -> None:
        for gone in set(self._relays) - set(addresses):
            del self._relays[gone]
        if self.probe_relay is None:
            return

        async def probe_one(relay_id: PeerId, text: str, probe_relay: RelayProber) -> None:
            probe = None
            with trio.move_on_after(self.config.ping_timeout):
                probe = await probe_relay(PeerAddress.parse(text))  # parsed for the snapshot
            last = self._relays.get(relay_id, RelayMeasure())
            if probe is None:
                self._relays[relay_id] = replace(last, rtt=None, load=None, missed=last.missed + 1)
            else:
                self._relays[relay_id] = RelayMeasure(probe.rtt, probe.load, self._clock())

        async with trio.open_nursery() as nursery:
            for relay_id, text in addresses.items():
                nursery.start_soon(probe_one, relay_id, text, self.probe_relay)

    def _count_served(self, peer_id: PeerId, now: float, tokens: int) -> None:
        """The peer's tokens per second since its last answer (none after a restart)."""
        last = self._counted.get(peer_id)
        if last is not None and now > last[0] and tokens >= last[1]:
            self._serving[peer_id] = (tokens - last[1]) / (now - last[0])
        self._counted[peer_id] = (now, tokens)
