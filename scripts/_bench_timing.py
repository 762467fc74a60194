"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable, Sequence
from typing import Any


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


def median_range(samples: Sequence[float], unit: str = "", scale: float = 1.0) -> dict[str, Any]:
    """Median, min, max and every run of a few runs, times `scale`, under keys that end in
    `unit` ("median_ms", ... for unit "_ms")."""
    values = [sample * scale for sample in samples]
    return {
        f"median{unit}": statistics.median(values),
        f"min{unit}": min(values),
        f"max{unit}": max(values),
        f"runs{unit}": values,
    }
