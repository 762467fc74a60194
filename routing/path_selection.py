"""Choosing a chain of peers that covers a model's blocks: pure functions, no I/O.

A client drives each token through its chain hop by hop, so a hop through peer `p` over
blocks `[i, j)` costs one round trip to `p` plus the compute of `j - i` blocks there:

    cost(p, i, j) = rtt(p) + (j - i) / throughput(p) * load_factor(p)

`throughput` is what the peer announces: tokens per second through ONE block. The load
factor grows with the sessions a peer already serves; peers that open no session that long,
or lack the cache tokens for it, are left out (`NoRoomError` when only room is missing).
The cheapest chain is a shortest path over the block boundaries 0..N (Dijkstra), which may
use part of a peer's span. For batch `forward`, where throughput matters more than latency,
`spread_choice` picks among the replicas of each span in proportion to their spare
throughput, so concurrent requests spread over the swarm.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from .errors import RoutingError

DEFAULT_RTT = 0.05  # seconds, assumed for a peer not yet pinged
LOAD_PENALTY_PER_SESSION = 0.1


class NoRouteError(RoutingError):
    """No chain covers the model: `missing` lists the blocks that nobody serves (with the
    LoRA `adapter` the client runs, if it runs one; under a `condition`, such as room for the
    session, if only that is what is missing)."""

    def __init__(
        self, missing: Sequence[int], adapter: str | None = None, condition: str = ""
    ) -> None:
        self.missing = tuple(missing)
        self.condition = condition
        with_adapter = f" with adapter {adapter!r}" if adapter else ""
        super().__init__(
            f"no peer serves block(s) {_ranges(self.missing)}{with_adapter}"
            + (f" {condition}" if condition else "")
        )


class NoRoomError(NoRouteError):
    """Peers serve every block, but some only on peers without room in their cache for the
    session now: a retry may succeed once sessions close."""


@dataclass(frozen=True)
class Candidate:
    """One peer as seen by the client: its span, speed, load and distance."""

    peer: str
    start: int
    end: int
    throughput: float
    sessions: int = 0
    cache_tokens_left: int = 2**62
    rtt: float | None = None
    max_session_length: int = 0  # the longest session it opens (0: it does not say)

    def takes(self, session_length: int) -> bool:
        """Whether it opens sessions of this length (one that does not say is tried)."""
        return (self.max_session_length or session_length) >= session_length


@dataclass(frozen=True)
class Hop:
    peer: str
    start: int
    end: int


def hop_cost(candidate: Candidate, start: int, end: int) -> float:
    rtt = DEFAULT_RTT if candidate.rtt is None else candidate.rtt
    if candidate.throughput <= 0:
        return math.inf
    load = 1.0 + LOAD_PENALTY_PER_SESSION * candidate.sessions
    return rtt + (end - start) / candidate.throughput * load


def chain_cost(chain: Sequence[Hop], candidates: Mapping[str, Candidate]) -> float:
    return sum(hop_cost(candidates[hop.peer], hop.start, hop.end) for hop in chain)


def fastest_chain(
    candidates: Iterable[Candidate],
    num_blocks: int,
    *,
    start: int = 0,
    end: int | None = None,
    tokens_needed: int = 0,
    session_length: int = 0,
    banned: frozenset[str] = frozenset(),
) -> list[Hop]:
    """The chain over blocks [start, end) with the lowest expected time per token, for a
    session of `session_length` tokens that needs `tokens_needed` of each peer's cache."""
    end = num_blocks if end is None else end
    serving = [c for c in candidates if c.peer not in banned and c.throughput > 0]
    _check_coverage(serving, start, end)
    long_enough = [c for c in serving if c.takes(session_length)]
    _check_coverage(long_enough, start, end, f"for sessions of {session_length} tokens")
    usable = [c for c in long_enough if c.cache_tokens_left >= tokens_needed]
    _check_coverage(usable, start, end, "with room in its cache", NoRoomError)
    best = {start: 0.0}
    previous: dict[int, Hop] = {}
    queue = [(0.0, start)]
    while queue:
        cost, boundary = heapq.heappop(queue)
        if boundary == end:
            break
        if cost > best.get(boundary, math.inf):
            continue
        for candidate in usable:
            if not candidate.start <= boundary < candidate.end:
                continue
            for stop in range(boundary + 1, min(candidate.end, end) + 1):
                total = cost + hop_cost(candidate, boundary, stop)
                if total < best.get(stop, math.inf):
                    best[stop] = total
                    previous[stop] = Hop(candidate.peer, boundary, stop)
                    heapq.heappush(queue, (total, stop))
    chain = []
    boundary = end
    while boundary != start:
        hop = previous[boundary]
        chain.append(hop)
        boundary = hop.start
    return chain[::-1]


def spread_choice(
    candidates: Iterable[Candidate],
    num_blocks: int,
    *,
    rng: random.Random,
    banned: frozenset[str] = frozenset(),
    start: int = 0,
) -> list[Hop]:
    """A chain for batch forward over blocks [start, num_blocks): at each boundary, a covering
    peer drawn by spare throughput, used to the end of its span. Spreads concurrent requests
    over replicas."""
    usable = [c for c in candidates if c.peer not in banned and c.throughput > 0]
    _check_coverage(usable, start, num_blocks)
    chain = []
    boundary = start
    while boundary < num_blocks:
        covering = [c for c in usable if c.start <= boundary < c.end]
        weights = [c.throughput / (1 + c.sessions) for c in covering]
        chosen = rng.choices(covering, weights=weights)[0]
        stop = min(chosen.end, num_blocks)
        chain.append(Hop(chosen.peer, boundary, stop))
        boundary = stop
    return chain


def _check_coverage(
    candidates: Sequence[Candidate],
    start: int,
    end: int,
    condition: str = "",
    error: type[NoRouteError] = NoRouteError,
) -> None:
    covered: set[int] = set()
    for candidate in candidates:
        covered.update(range(max(candidate.start, start), min(candidate.end, end)))
    missing = [block for block in range(start, end) if block not in covered]
    if missing:
        raise error(missing, condition=condition)


def _ranges(blocks: Sequence[int]) -> str:
    """`[0, 1, 2, 5]` -> `"0-2, 5"`."""
    parts = []
    first = previous = blocks[0]
    for block in [*blocks[1:], None]:
        if block is not None and block == previous + 1:
            previous = block
            continue
        parts.append(f"{first}" if first == previous else f"{first}-{previous}")
        if block is not None:
            first = previous = block
    return ", ".join(parts)
