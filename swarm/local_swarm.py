"""A whole swarm on this machine: a DHT node, peers and the monitor page, each its own process.

`swarm demo` and the end-to-end tests start one with `LocalSwarm(...)` in a `with` block; on
exit (also on Ctrl-C) every process it started is stopped. `demo_spans` is the layout: the
blocks split between the first peers, and the last span served twice, so that a peer of the
chain can die and the chain survives.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from .errors import SwarmError
from .processes import SwarmProcess

logger = logging.getLogger(__name__)


def demo_spans(num_blocks: int, peers: int) -> list[tuple[int, int]]:
    """Spans for `peers` peers: the first `peers - 1` split the blocks, the last repeats a span."""
    if num_blocks < 1 or peers < 1:
        raise SwarmError("a swarm needs at least one block and one peer")
    parts = min(max(peers - 1, 1), num_blocks)
    bounds = [round(i * num_blocks / parts) for i in range(parts + 1)]
    spans = list(itertools.pairwise(bounds))
    while len(spans) < peers:
        spans.append(spans[-1 - (len(spans) - parts) % parts])
    return spans


@dataclass(frozen=True)
class PeerProcess:
    """A running `swarm peer` and what it serves."""

    process: SwarmProcess
    start: int
    end: int

    @property
    def address(self) -> str:
        return self.process.address

    @property
    def peer_id(self) -> str:
        return self.process.address.rsplit("/", 1)[-1]


class LocalSwarm:
    """Start a DHT node, one `swarm peer` per span and (optionally) the monitor."""

    def __init__(
        self,
        checkpoint: Path,
        spans: Sequence[tuple[int, int]],
        *,
        monitor: bool = True,
        peer_options: Sequence[str] = (),
        ready_timeout: float = 300.0,
    ) -> None:
        self.checkpoint = checkpoint
        self.spans = list(spans)
        self.with_monitor = monitor
        self.peer_options = list(peer_options)
        self.ready_timeout = ready_timeout
        self.processes: list[SwarmProcess] = []
        self.bootstrap = ""
        self.peers: list[PeerProcess] = []
        self.monitor_url = ""

    def _start(self, args: Sequence[str]) -> SwarmProcess:
        process = SwarmProcess(args)
        self.processes.append(process)
        return process

    def __enter__(self) -> LocalSwarm:
        try:
            self.bootstrap = self._start(["dht"]).wait_ready(self.ready_timeout)
            logger.info("DHT node at %s", self.bootstrap)
            join = ["--initial-peers", self.bootstrap]
            starting = [
                (self._start(["peer", str(self.checkpoint), *join, "--blocks", f"{a}:{b}",
                              *self.peer_options]), a, b)
                for a, b in self.spans
            ]  # fmt: skip
            monitor = self._start(["monitor", *join]) if self.with_monitor else None
            for process, start, end in starting:  # they load in parallel; collect in order
                process.wait_ready(self.ready_timeout)
                self.peers.append(PeerProcess(process, start, end))
                logger.info("peer %s serves blocks %d..%d", process.address, start, end - 1)
            if monitor is not None:
                self.monitor_url = monitor.wait_ready(self.ready_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def peer(self, peer_id: str) -> PeerProcess:
        for peer in self.peers:
            if peer.peer_id == peer_id:
                return peer
        raise SwarmError(f"no peer {peer_id} in this swarm")

    def stop(self) -> None:
        """Stop every process, the newest first (peers announce `offline` while the DHT is up)."""
        while self.processes:
            self.processes.pop().stop()
