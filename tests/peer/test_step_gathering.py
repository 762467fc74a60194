"""StepGathering: which sessions a step waits for, on a clock of the test's own."""

from __future__ import annotations

from peer.step_gathering import MAX_WAIT, WAIT_STEPS, StepGathering


def _cycle(gathering: StepGathering, session_id: str, at: float, compute: float = 0.01) -> None:
    """A one-token step of `session_id` arrives at `at` and computes `compute` seconds."""
    gathering.arrived(session_id, at)
    gathering.finished(session_id, at + compute, compute)


def test_a_session_is_awaited_once_it_has_a_cadence() -> None:
    gathering = StepGathering()
    _cycle(gathering, "a", 0.0)  # finished at 0.01
    assert gathering.window() == WAIT_STEPS * 0.01
    assert gathering.awaited(0.05, 0.01) == []  # no absence measured yet: no cadence
    _cycle(gathering, "a", 0.11)  # away 0.1, finished at 0.12: back at 0.22
    assert gathering.awaited(0.20, 0.01) == []  # expected in 0.02: more than a window
    assert gathering.awaited(0.215, 0.01) == ["a"]
    assert gathering.awaited(0.225, 0.01) == ["a"]  # late by less than a window
    assert gathering.awaited(0.235, 0.01) == []  # late by more: it stopped
    gathering.arrived("a", 0.221)
    assert gathering.awaited(0.221, 0.01) == []  # here: nothing to wait for


def test_the_expected_absence_is_the_median_of_the_recent_ones() -> None:
    gathering = StepGathering()
    at = 0.0
    for away in (0.1, 0.1, 0.1, 0.5):  # one slow round trip does not move it
        _cycle(gathering, "a", at)
        at += 0.01 + away
    _cycle(gathering, "a", at)
    back = at + 0.01 + 0.1
    assert gathering.awaited(back, 0.001) == ["a"]


def test_the_window_is_a_few_recent_step_times_capped() -> None:
    gathering = StepGathering()
    assert gathering.window() == 0.0  # no step yet: nothing waits
    for compute in (0.02, 0.03, 0.5, 0.02, 0.03):
        _cycle(gathering, "a", 1.0, compute)
    assert gathering.window() == WAIT_STEPS * 0.03
    gathering.finished("a", 2.0, None)  # a prompt's step: not a sample
    assert gathering.window() == WAIT_STEPS * 0.03
    for _ in range(5):
        _cycle(gathering, "a", 3.0, 1.0)
    assert gathering.window() == MAX_WAIT


def test_closed_sessions_are_forgotten() -> None:
    gathering = StepGathering()
    for at in (0.0, 0.1):
        _cycle(gathering, "a", at)
        _cycle(gathering, "b", at + 0.02)
    assert sorted(gathering.awaited(0.2, 0.03)) == ["a", "b"]
    gathering.forget("b")
    assert gathering.awaited(0.2, 0.03) == ["a"]
