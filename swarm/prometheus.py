"""Prometheus' text exposition format (0.0.4), written: what `/metrics` routes serve. Pure.

A metric is written as its `# HELP` and `# TYPE` lines, then one line per sample; label
values are escaped as the format requires (they may come from peers).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Protocol

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]
Sample = tuple[Labels, float]


def metric(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> Iterator[str]:
    """The lines of one metric of `kind` (gauge, counter) and its samples."""
    yield f"# HELP {name} {help_text}"
    yield f"# TYPE {name} {kind}"
    yield from _samples(name, samples)


def _samples(name: str, samples: Iterable[Sample]) -> Iterator[str]:
    for labels, value in samples:
        shown = ",".join(f'{key}="{_escaped(text)}"' for key, text in labels)
        yield f"{name}{{{shown}}} {_number(value)}" if labels else f"{name} {_number(value)}"


class Buckets(Protocol):
    """Observations counted in buckets (`peer.activity.Durations` is one)."""

    bounds: tuple[float, ...]
    counts: list[int]
    total: float


def histogram(name: str, help_text: str, series: Iterable[tuple[Labels, Buckets]]) -> Iterator[str]:
    """The lines of one histogram, a series per set of labels: of its `counts`, `counts[i]`
    observations fell at most at `bounds[i]` and above the bound before (the last, above
    every bound); `total` is their sum."""
    yield from metric(name, "histogram", help_text, [])
    for labels, buckets in series:
        running = 0
        for bound, count in zip([*buckets.bounds, math.inf], buckets.counts, strict=True):
            running += count
            yield from _samples(f"{name}_bucket", [((*labels, ("le", _number(bound))), running)])
        yield from _samples(f"{name}_sum", [(labels, buckets.total)])
        yield from _samples(f"{name}_count", [(labels, running)])


def exposition(lines: Iterable[str]) -> str:
    """The lines of some metrics as one text."""
    return "\n".join(lines) + "\n"


def _escaped(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
