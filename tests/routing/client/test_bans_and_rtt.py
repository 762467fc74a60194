"""The client's pure bookkeeping: bans with exponential backoff, smoothed RTTs."""

from __future__ import annotations

import pytest

from routing.client.bans import Bans
from routing.client.rtt import RttTable


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bans_double_on_each_failure_up_to_the_cap() -> None:
    clock = FakeClock()
    bans = Bans(clock, base=2.0, cap=10.0)
    assert [bans.ban("a") for _ in range(5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert bans.banned() == frozenset({"a"})
    clock.now += 9.9
    assert bans.banned() == frozenset({"a"})
    clock.now += 0.2
    assert bans.banned() == frozenset()


def test_bans_are_per_peer_and_a_success_resets_the_backoff() -> None:
    clock = FakeClock()
    bans = Bans(clock)
    bans.ban("a")
    bans.ban("a")
    assert bans.ban("b") == 2.0
    assert bans.banned() == frozenset({"a", "b"})
    clock.now += 2.5
    assert bans.banned() == frozenset({"a"})  # b's 2 s are over, a's 4 s are not
    bans.succeeded("a")
    assert bans.ban("a") == 2.0


def test_rtt_is_smoothed_like_tcp_srtt() -> None:
    table = RttTable(weight=0.25)
    assert table.get("a") is None
    table.observe("a", 0.100)
    assert table.get("a") == pytest.approx(0.100)
    table.observe("a", 0.020)  # one fast sample moves it a quarter of the way
    assert table.get("a") == pytest.approx(0.080)
    for _ in range(30):
        table.observe("a", 0.020)
    assert table.get("a") == pytest.approx(0.020, abs=1e-4)
    assert table.get("b") is None
