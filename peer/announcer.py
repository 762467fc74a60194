"""Tell the swarm what this peer serves: a signed announcement under every block's DHT key.

On start it publishes its current state (`online` once serving) under
`block_key(model, b)` for each block of its span, and the model's length under `MODELS_KEY`;
every half lifetime it publishes fresh numbers (sessions, cache tokens left); on the way out
it publishes `offline` (shielded and bounded in time) so clients and the monitor drop it at
once. The DHT node republishes what we stored until then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from routing.announcement import MODELS_KEY, ModelEntry, PeerAnnouncement, PeerState, block_key
from routing.dht import DHTNode
from routing.errors import RoutingError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnouncerConfig:
    ttl: float = 120.0  # seconds a record lives; refreshed at half of it
    goodbye_timeout: float = 5.0  # seconds to publish `offline` on shutdown


class Announcer:
    """Publishes `describe(state)` for every block of the span until cancelled."""

    def __init__(
        self,
        dht: DHTNode,
        describe: Callable[[PeerState], PeerAnnouncement],
        num_blocks: int,
        config: AnnouncerConfig | None = None,
    ) -> None:
        self.dht = dht
        self.describe = describe
        self.num_blocks = num_blocks
        self.config = config or AnnouncerConfig()

    async def publish(self, state: PeerState) -> None:
        announcement = self.describe(state)
        record = announcement.encode()
        entry = ModelEntry(announcement.model, self.num_blocks).encode()
        ttl = self.config.ttl
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._store, MODELS_KEY, entry, ttl)
            for block in announcement.blocks:
                nursery.start_soon(self._store, block_key(announcement.model, block), record, ttl)

    async def retire(self, blocks: Iterable[int]) -> None:
        """Blocks we no longer serve: their keys get our current record (whose span no longer
        contains them, so readers skip it) and are not republished any more."""
        announcement = self.describe(PeerState.ONLINE)
        record = announcement.encode()
        keys = [block_key(announcement.model, block) for block in blocks]
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(self._store, key, record, self.config.ttl)
        for key in keys:
            self.dht.forget_own(key)

    async def _store(self, key: str, value: bytes, ttl: float) -> None:
        try:
            await self.dht.store_own(key, value, ttl)
        except RoutingError as error:  # the DHT republishes; the next refresh retries
            logger.warning("could not announce %s: %s", key, error)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.publish(PeerState.ONLINE)
        task_status.started()
        try:
            while True:
                await trio.sleep(self.config.ttl / 2)
                await self.publish(PeerState.ONLINE)
        finally:
            with trio.move_on_after(self.config.goodbye_timeout) as scope:
                scope.shield = True
                await self.publish(PeerState.OFFLINE)
                logger.info("announced offline")
