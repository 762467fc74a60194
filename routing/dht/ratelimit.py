"""Per-peer token buckets: how many stores a remote peer may make. Pure, `now` is passed in.

Each peer's bucket holds up to `burst` tokens and refills at `rate` tokens per second. Only
the `max_peers` most recently active peers are tracked, so a flood of new identities costs
memory bounded by that number (a forgotten peer comes back with a full bucket, which is the
price of bounded memory; peer ids cost a handshake each to use).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

Peer = TypeVar("Peer")


class RateLimiter(Generic[Peer]):
    def __init__(self, *, rate: float, burst: float, max_peers: int = 4096) -> None:
        if rate <= 0 or burst < 1 or max_peers < 1:
            raise ValueError("invalid rate limit")
        self.rate = rate
        self.burst = burst
        self.max_peers = max_peers
        self._buckets: OrderedDict[Peer, tuple[float, float]] = OrderedDict()  # tokens, time

    def allow(self, peer: Peer, now: float, cost: float = 1.0) -> bool:
        """Take `cost` tokens from the peer's bucket; False (and nothing taken) if too few."""
        tokens, then = self._buckets.pop(peer, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - then) * self.rate)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[peer] = (tokens, now)
        while len(self._buckets) > self.max_peers:
            self._buckets.popitem(last=False)
        return allowed
