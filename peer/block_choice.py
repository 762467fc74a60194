"""Which blocks a peer started without `--blocks` serves: where the swarm is weakest. Pure.

The swarm's strength at a block is the total announced throughput of the online peers that
serve it. A new peer takes the window of `length` blocks with the lowest total (ties: the
lowest start), so peers that join one after another fill the gaps first and then thicken the
thinnest parts.

Peers that start together: each announces the span it claims as `joining` before it loads,
and `claim_span` counts the joining peers whose id sorts before ours as if they served their
claim already (at the online peers' mean throughput). Two peers that chose the same span at
the same instant therefore part on their next look: the one with the larger id moves.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Mapping

from routing.announcement import PeerAnnouncement, PeerState

from .errors import InvalidRequestError


def block_throughput(num_blocks: int, announcements: Iterable[PeerAnnouncement]) -> list[float]:
    """Total throughput of the online peers at each block."""
    totals = [0.0] * num_blocks
    for announcement in announcements:
        if announcement.state is PeerState.ONLINE:
            for block in range(announcement.start, min(announcement.end, num_blocks)):
                totals[block] += announcement.throughput
    return totals


def choose_span(
    num_blocks: int, length: int, announcements: Iterable[PeerAnnouncement]
) -> tuple[int, int]:
    """The `length` consecutive blocks where the swarm is weakest."""
    if not 1 <= length <= num_blocks:
        raise InvalidRequestError(f"cannot serve {length} of {num_blocks} blocks")
    totals = block_throughput(num_blocks, announcements)
    start = min(range(num_blocks - length + 1), key=lambda s: (sum(totals[s : s + length]), s))
    return start, start + length


def bottleneck(totals: list[float]) -> float:
    """The swarm's throughput for a whole chain: its weakest block."""
    return min(totals) if totals else 0.0


def better_span(
    num_blocks: int,
    current: tuple[int, int],
    own_throughput: float,
    others: Iterable[PeerAnnouncement],
    margin: float,
) -> tuple[int, int] | None:
    """Where this peer should move, if moving raises the swarm's bottleneck by more than
    `margin` (relative); None to stay. `others` excludes this peer's own records."""
    start, end = current
    length = end - start
    base = block_throughput(num_blocks, others)

    def with_us(at: int) -> float:
        totals = list(base)
        for block in range(at, at + length):
            totals[block] += own_throughput
        return bottleneck(totals)

    staying = with_us(start)
    best = max(range(num_blocks - length + 1), key=lambda at: (with_us(at), -abs(at - start)))
    if with_us(best) > staying * (1 + margin) and best != start:
        return best, best + length
    return None


def claim_span(
    num_blocks: int,
    length: int,
    own: str,
    announcements: Mapping[str, PeerAnnouncement],
) -> tuple[int, int]:
    """`choose_span`, counting the joining peers that go before `own` (see the module doc).
    Peers are keyed by their base58 id, as `SwarmView.peers` keys them."""
    others = {peer: a for peer, a in announcements.items() if peer != own}
    online = [a.throughput for a in others.values() if a.state is PeerState.ONLINE]
    expected = statistics.fmean(online) if online else 1.0
    counted = [
        a
        if a.state is not PeerState.JOINING
        else dataclasses.replace(a, state=PeerState.ONLINE, throughput=expected)
        for peer, a in others.items()
        if a.state is not PeerState.JOINING or peer < own
    ]
    return choose_span(num_blocks, length, counted)
