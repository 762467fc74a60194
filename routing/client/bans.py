"""Peers the client avoids for a while after they failed, with exponential backoff. Pure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Bans:
    """`ban(peer)` keeps a peer out of routes for `base * 2**(failures-1)` s (up to `cap`)."""

    clock: Callable[[], float]
    base: float = 2.0
    cap: float = 300.0
    _until: dict[str, float] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)

    def ban(self, peer: str) -> float:
        """Ban `peer`; returns for how many seconds."""
        failures = self._failures.get(peer, 0) + 1
        self._failures[peer] = failures
        seconds = min(self.cap, self.base * 2.0 ** (failures - 1))
        self._until[peer] = self.clock() + seconds
        return seconds

    def succeeded(self, peer: str) -> None:
        """A peer that served a step well starts again from the short ban."""
        self._failures.pop(peer, None)

    def forgive(self, peer: str) -> None:
        """Lift `peer`'s ban, and forget its failures (it serves somewhere else now)."""
        self._failures.pop(peer, None)
        self._until.pop(peer, None)

    def banned(self) -> frozenset[str]:
        now = self.clock()
        return frozenset(peer for peer, until in self._until.items() if until > now)
