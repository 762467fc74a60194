"""Path selection on hand-built swarms."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from routing.path_selection import (
    Candidate,
    Hop,
    NoRoomError,
    NoRouteError,
    chain_cost,
    fastest_chain,
    spread_choice,
)


def test_single_full_peer() -> None:
    chain = fastest_chain([Candidate("a", 0, 8, throughput=100, rtt=0.001)], 8)
    assert chain == [Hop("a", 0, 8)]


def test_fast_far_peer_beats_slow_near_one_when_compute_dominates() -> None:
    near_slow = Candidate("near", 0, 32, throughput=50, rtt=0.001)  # 0.64 s of compute
    far_fast = Candidate("far", 0, 32, throughput=5000, rtt=0.08)  # 0.0064 s + 80 ms
    assert fastest_chain([near_slow, far_fast], 32) == [Hop("far", 0, 32)]
    # ...and loses when the network dominates
    near_ok = Candidate("near", 0, 32, throughput=2000, rtt=0.001)
    assert fastest_chain([near_ok, far_fast], 32) == [Hop("near", 0, 32)]


def test_fewer_hops_win_when_peers_are_equal() -> None:
    whole = Candidate("whole", 0, 8, throughput=1000, rtt=0.01)
    halves = [Candidate("h1", 0, 4, 1000, rtt=0.01), Candidate("h2", 4, 8, 1000, rtt=0.01)]
    assert fastest_chain([*halves, whole], 8) == [Hop("whole", 0, 8)]


def test_busy_replica_is_avoided() -> None:
    idle = Candidate("idle", 0, 8, throughput=100, sessions=0, rtt=0.01)
    busy = Candidate("busy", 0, 8, throughput=100, sessions=20, rtt=0.01)
    assert fastest_chain([busy, idle], 8) == [Hop("idle", 0, 8)]


def test_peers_short_of_cache_are_left_out() -> None:
    full = Candidate("full", 0, 8, throughput=1000, cache_tokens_left=10, rtt=0.001)
    roomy = Candidate("roomy", 0, 8, throughput=100, cache_tokens_left=4096, rtt=0.01)
    assert fastest_chain([full, roomy], 8, tokens_needed=512) == [Hop("roomy", 0, 8)]


def test_peers_whose_sessions_are_too_short_are_left_out() -> None:
    """A peer that opens sessions of at most 512 tokens is no route for 1,024; one that does
    not say (an older record) is tried. When nobody fits, the error says why."""
    short = Candidate("short", 0, 8, throughput=1000, rtt=0.001, max_session_length=512)
    long = Candidate("long", 0, 8, throughput=100, rtt=0.01, max_session_length=4096)
    unsaid = Candidate("unsaid", 0, 8, throughput=10, rtt=0.01)
    assert fastest_chain([short, long], 8, session_length=1024) == [Hop("long", 0, 8)]
    assert fastest_chain([short, long], 8, session_length=512) == [Hop("short", 0, 8)]
    assert fastest_chain([short, unsaid], 8, session_length=1024) == [Hop("unsaid", 0, 8)]
    with pytest.raises(NoRouteError, match="0-7 for sessions of 8192 tokens") as caught:
        fastest_chain([short, long], 8, session_length=8192)
    assert not isinstance(caught.value, NoRoomError)  # closing sessions would not help
    with pytest.raises(NoRoomError, match="with room in its cache"):
        fastest_chain([short], 8, tokens_needed=2**63)


def test_overlapping_spans_use_part_of_a_span() -> None:
    a = Candidate("a", 0, 6, throughput=1000, rtt=0.01)
    b = Candidate("b", 4, 10, throughput=1000, rtt=0.01)
    chain = fastest_chain([a, b], 10)
    assert [hop.peer for hop in chain] == ["a", "b"]
    assert chain[0].start == 0 and chain[-1].end == 10 and chain[0].end == chain[1].start


def test_chain_is_optimal_against_brute_force() -> None:
    rng = random.Random(7)
    for _ in range(30):
        candidates = [
            Candidate(f"p{i}", s, s + rng.randint(1, 5), rng.uniform(10, 1000), rtt=rng.random())
            for i, s in enumerate(rng.choices(range(8), k=7))
        ]
        try:
            chain = fastest_chain(candidates, 8)
        except NoRouteError:
            continue
        by_peer = {c.peer: c for c in candidates}
        assert chain_cost(chain, by_peer) <= _brute_force(candidates, 0, 8) + 1e-9


def _brute_force(candidates: list[Candidate], boundary: int, end: int) -> float:
    if boundary == end:
        return 0.0
    from routing.path_selection import hop_cost

    return min(
        (
            hop_cost(c, boundary, stop) + _brute_force(candidates, stop, end)
            for c in candidates
            if c.start <= boundary < c.end
            for stop in range(boundary + 1, min(c.end, end) + 1)
        ),
        default=float("inf"),
    )


def test_gap_names_the_missing_blocks() -> None:
    peers = [Candidate("a", 0, 3, 100), Candidate("b", 5, 8, 100), Candidate("c", 9, 10, 100)]
    with pytest.raises(NoRouteError) as caught:
        fastest_chain(peers, 10)
    assert caught.value.missing == (3, 4, 8)
    assert "3-4, 8" in str(caught.value)


def test_banned_peers_are_routed_around() -> None:
    peers = [Candidate("a", 0, 8, 1000, rtt=0.001), Candidate("b", 0, 8, 10, rtt=0.1)]
    assert fastest_chain(peers, 8, banned=frozenset({"a"})) == [Hop("b", 0, 8)]
    with pytest.raises(NoRouteError):
        fastest_chain(peers, 8, banned=frozenset({"a", "b"}))


def test_spread_choice_follows_spare_throughput() -> None:
    peers = [Candidate("fast", 0, 4, 300), Candidate("slow", 0, 4, 100), Candidate("t", 4, 8, 50)]
    rng = random.Random(0)
    counts = Counter(spread_choice(peers, 8, rng=rng)[0].peer for _ in range(2000))
    assert 0.7 < counts["fast"] / 2000 < 0.8  # 300 / 400 expected
    assert all(spread_choice(peers, 8, rng=rng)[-1] == Hop("t", 4, 8) for _ in range(10))
