"""The demo's layout: spans cover every block, and some span is served twice."""

from __future__ import annotations

from collections import Counter

import pytest

from swarm.errors import SwarmError
from swarm.local_swarm import demo_spans


@pytest.mark.parametrize("num_blocks", [1, 2, 3, 8, 30])
@pytest.mark.parametrize("peers", [1, 2, 3, 4, 7])
def test_spans_cover_the_model_and_repeat_one(num_blocks: int, peers: int) -> None:
    spans = demo_spans(num_blocks, peers)
    assert len(spans) == peers
    assert all(0 <= start < end <= num_blocks for start, end in spans)
    coverage = Counter(block for start, end in spans for block in range(start, end))
    assert set(coverage) == set(range(num_blocks))
    if peers > 1:  # a peer of the chain can die and another serves its blocks
        assert any(count > 1 for count in coverage.values())


def test_three_peers_split_then_repeat_the_last_span() -> None:
    assert demo_spans(30, 3) == [(0, 15), (15, 30), (15, 30)]


def test_nonsense_is_refused() -> None:
    with pytest.raises(SwarmError):
        demo_spans(0, 3)
