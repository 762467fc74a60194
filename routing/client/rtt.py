"""Smoothed round-trip times per peer (exponentially weighted, like TCP's SRTT). Pure."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RttTable:
    """`observe(peer, seconds)` folds a sample in; `get(peer)` is the smoothed value or None."""

    weight: float = 0.25  # of a new sample
    _smoothed: dict[str, float] = field(default_factory=dict)

    def observe(self, peer: str, seconds: float) -> None:
        previous = self._smoothed.get(peer)
        self._smoothed[peer] = (
            seconds if previous is None else (1 - self.weight) * previous + self.weight * seconds
        )

    def get(self, peer: str) -> float | None:
        return self._smoothed.get(peer)
