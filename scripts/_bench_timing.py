"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import time
from collections.abc import Iterable


def token_gaps(tokens: Iterable[object]) -> list[float]:
    """Seconds between successive items of a token stream, consumed here; the first item
    (the prompt's step) is left out."""
    gaps: list[float] = []
    previous: float | None = None
    for _ in tokens:
        now = time.perf_counter()
        if previous is not None:
            gaps.append(now - previous)
        previous = now
    return gaps
