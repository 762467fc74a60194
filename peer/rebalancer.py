"""Moving a peer to where the swarm needs it (for peers that chose their blocks themselves).

Every `interval` seconds, if it serves no session, the peer reads the swarm and asks
`block_choice.better_span` whether another window of the same length would raise the swarm's
bottleneck throughput by more than `margin`. If so it loads that span (in the compute
worker), switches the scheduler to it between steps, announces the new span, and retires the
old blocks' records. Sessions opened while it was loading cancel the move.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from routing.announcement import PeerState
from routing.client import SwarmView

from .announcer import Announcer
from .backend import SpanBackend
from .block_choice import better_span

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RebalanceConfig:
    interval: float = 60.0  # seconds between checks
    margin: float = 0.2  # move only if the bottleneck rises by more than this (relative)


class SpanLoader(Protocol):
    async def __call__(self, start: int, end: int) -> SpanBackend: ...


class Rebalancer:
    """`serving()` gives the backend in use; `switch(backend)` makes the peer serve another."""

    def __init__(
        self,
        view: SwarmView,
        announcer: Announcer,
        serving: Callable[[], SpanBackend],
        load: SpanLoader,
        switch: Callable[[SpanBackend], None],
        own_peer: str,
        throughput: float,
        config: RebalanceConfig,
    ) -> None:
        self.view = view
        self.announcer = announcer
        self.serving = serving
        self.load = load
        self.switch = switch
        self.own_peer = own_peer
        self.throughput = throughput
        self.config = config

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.config.interval)
            await self.check()

    async def check(self) -> bool:
        """One look at the swarm; True if the peer moved."""
        backend = self.serving()
        if backend.active_sessions:
            return False
        await self.view.refresh()
        others = [a for peer, a in self.view.peers.items() if peer != self.own_peer]
        current = (backend.start, backend.end)
        target = better_span(
            self.view.num_blocks, current, self.throughput, others, self.config.margin
        )
        if target is None:
            return False
        logger.info("moving from blocks %d..%d to %d..%d", *current, target[0], target[1] - 1)
        moved = await self.load(*target)
        if backend.active_sessions:  # someone started using us meanwhile: stay
            logger.info("sessions opened while loading: staying")
            return False
        self.switch(moved)
        await self.announcer.publish(PeerState.ONLINE)
        await self.announcer.retire(set(range(*current)) - set(range(*target)))
        return True
