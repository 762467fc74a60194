"""The iterative Kademlia lookup as a pure state machine; `node.py` drives it with trio.

Candidates are kept sorted by XOR distance to the target. The lookup asks the nearest
candidates it has not asked yet, at most `alpha` at a time; every reply adds the nodes it
names; a node that fails (timeout, unreachable, malformed reply) is dropped from the
running. The lookup is done when the `k` nearest nodes that have not failed have all
replied (or `stop()` was called, e.g. a value was found). The result is those nodes.

Hops: a seed (from our own table) is one hop away; a node first named in the reply of a
node `h` hops away is `h + 1` hops away. The hop count of a lookup is the hop count of the
nearest node that replied, the length of the chain of replies that led to it.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..address import PeerAddress
from .ids import node_id_of


class _State(enum.Enum):
    NEW = "new"
    IN_FLIGHT = "in flight"
    REPLIED = "replied"
    FAILED = "failed"


@dataclass
class _Candidate:
    address: PeerAddress
    distance: int
    hops: int
    state: _State = _State.NEW


class Lookup:
    def __init__(
        self,
        target: int,
        seeds: Iterable[PeerAddress],
        *,
        own_id: int,
        k: int = 20,
        alpha: int = 3,
        max_candidates: int = 1024,
    ) -> None:
        if k < 1 or alpha < 1:
            raise ValueError("k and alpha must be positive")
        self.target = target
        self.own_id = own_id
        self.k = k
        self.alpha = alpha
        self.max_candidates = max_candidates
        self.queries = 0
        self._stopped = False
        self._candidates: dict[int, _Candidate] = {}
        self._order: list[tuple[int, int]] = []  # (distance, node id), nearest first
        self._in_flight = 0
        self._add(seeds, hops=1)

    def _add(self, addresses: Iterable[PeerAddress], hops: int) -> None:
        for address in addresses:
            node_id = node_id_of(address.peer_id)
            if node_id == self.own_id:
                continue
            known = self._candidates.get(node_id)
            if known is not None:
                if known.state is _State.NEW and hops < known.hops:
                    known.hops = hops
                continue
            if len(self._candidates) >= self.max_candidates:
                continue  # bounded memory; nearest candidates come first in practice
            distance = node_id ^ self.target
            self._candidates[node_id] = _Candidate(address, distance, hops)
            bisect.insort(self._order, (distance, node_id))

    def _live_nearest(self) -> list[_Candidate]:
        """The `k` nearest candidates that have not failed."""
        nearest: list[_Candidate] = []
        for _, node_id in self._order:
            candidate = self._candidates[node_id]
            if candidate.state is not _State.FAILED:
                nearest.append(candidate)
                if len(nearest) == self.k:
                    break
        return nearest

    def next_queries(self) -> list[PeerAddress]:
        """Nodes to ask now (marked in flight); empty if we must wait or are done."""
        if self._stopped:
            return []
        chosen: list[PeerAddress] = []
        for candidate in self._live_nearest():
            if self._in_flight >= self.alpha:
                break
            if candidate.state is _State.NEW:
                candidate.state = _State.IN_FLIGHT
                self._in_flight += 1
                self.queries += 1
                chosen.append(candidate.address)
        return chosen

    def _finish(self, address: PeerAddress, state: _State) -> _Candidate | None:
        candidate = self._candidates.get(node_id_of(address.peer_id))
        if candidate is None or candidate.state is not _State.IN_FLIGHT:
            return None  # not ours to settle: ignore rather than corrupt the counts
        candidate.state = state
        self._in_flight -= 1
        return candidate

    def on_reply(self, address: PeerAddress, nodes: Sequence[PeerAddress]) -> None:
        candidate = self._finish(address, _State.REPLIED)
        if candidate is not None:
            self._add(nodes, hops=candidate.hops + 1)

    def on_failure(self, address: PeerAddress) -> None:
        self._finish(address, _State.FAILED)

    def stop(self) -> None:
        self._stopped = True

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def done(self) -> bool:
        if self._stopped:
            return True
        if self._in_flight:
            return False
        return all(c.state is _State.REPLIED for c in self._live_nearest())

    def closest(self) -> list[PeerAddress]:
        """The nodes that replied among the `k` nearest live ones, nearest first."""
        return [c.address for c in self._live_nearest() if c.state is _State.REPLIED]

    def hops_to(self, address: PeerAddress) -> int:
        return self._candidates[node_id_of(address.peer_id)].hops

    @property
    def hops(self) -> int:
        """Hops to the nearest node that replied (0 if none did)."""
        closest = self.closest()
        return self.hops_to(closest[0]) if closest else 0
