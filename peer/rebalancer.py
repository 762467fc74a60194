"""Moving a peer to where the swarm needs it (for peers that chose their blocks themselves).

Every `interval` seconds, if it serves no session, the peer reads the swarm and asks
`block_choice.better_span` whether another window of the same length would raise the swarm's
bottleneck throughput by more than `margin`. If so it loads that span (in the compute
worker), switches the scheduler to it between steps, announces the new span, and retires the
old blocks' records. Sessions opened while it was loading cancel the move.

A peer with sessions never moves, unless asked to drain (`PeerControl.request_drain`, which
`swarm peer` wires to SIGUSR1): it then refuses new sessions (clients go elsewhere), and once
its last session ends it looks at once, moves if that helps, and takes sessions again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import trio

from routing.announcement import PeerState
from routing.client import SwarmView

from .activity import PeerStatus
from .announcer import Announcer
from .backend import SpanBackend
from .block_choice import better_span

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RebalanceConfig:
    interval: float = 60.0  # seconds between checks
    margin: float = 0.2  # move only if the bottleneck rises by more than this (relative)


class PeerControl:
    """What an operator can ask of a running peer."""

    def __init__(self) -> None:
        self.draining = False
        self.drain_changes = 0  # how often `draining` changed
        self._changed = trio.Event()
        self.status: Callable[[], PeerStatus] | None = None  # set once the peer serves

    def request_drain(self) -> None:
        """Take no new session; move (if that helps) once the current ones end."""
        if not self.draining:
            self.draining = True
            self._say_changed()

    def finish_drain(self) -> None:
        self.draining = False
        self._say_changed()

    def _say_changed(self) -> None:
        self.drain_changes += 1
        self._changed.set()
        self._changed = trio.Event()

    async def wait_drain_change(self, seen: int) -> None:
        """Until `draining` changed since it had changed `seen` times."""
        while self.drain_changes == seen:
            await self._changed.wait()

    async def wait(self, seconds: float) -> None:
        """Sleep `seconds`, or less if a drain is requested (or ends)."""
        with trio.move_on_after(seconds):
            await self.wait_drain_change(self.drain_changes)


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
        control: PeerControl,
    ) -> None:
        self.view = view
        self.announcer = announcer
        self.serving = serving
        self.load = load
        self.switch = switch
        self.own_peer = own_peer
        self.throughput = throughput
        self.config = config
        self.control = control

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if self.control.draining:
                await self._drain()
            else:
                await self.control.wait(self.config.interval)
                if not self.control.draining:
                    await self.check()

    async def _drain(self) -> None:
        logger.info("draining: no new sessions; moving once the last one ends")
        while self.serving().active_sessions:  # noqa: ASYNC110 (a count in the compute core)
            await trio.sleep(min(1.0, self.config.interval))
        await self.check()
        self.control.finish_drain()

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
