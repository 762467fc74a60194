"""`StepGathering`: which sessions a peer waits for before it runs a step, so that the steps
of sessions generating at once meet and run as one.

A one-token step costs a peer about the same for one row as for several (the weights are
read once), so sessions that step together through a chain cost it one step per token, not
one each. Left to themselves they do not meet: each session's steps go round the chain at
their own phase, and a peer that runs whatever has arrived (continuous batching) mostly finds
one. So the peer learns each session's cadence: when its last step here finished, and how
long it stayed away before the next one (the rest of its chain and its client; median of the
last `AWAY_SAMPLES`). Before it runs a step it waits for the sessions expected back within
`WAIT_STEPS` of its recent step times (a merge saves a step's time for each session it takes
in; at most `MAX_WAIT`), until every one of them is here or that time is up. Sessions that
met leave together and come back together, so after a few tokens the steps of a chain's
sessions travel as one. A session that stepped only once, idles (a conversation waiting for
its next turn) or is overdue by more than that time (it stopped) is not waited for: one
generation alone never waits. Pure bookkeeping, on the caller's clock: `InferenceScheduler`
tells it when steps arrive, finish and how long they computed, and asks `window` and
`awaited`.
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field

AWAY_SAMPLES = 3  # the recent absences of a session whose median is its expected absence
STEP_SAMPLES = 5  # the recent step times whose median is what a merge saves
WAIT_STEPS = 2.0  # how many recent step times a step may wait for others
MAX_WAIT = 0.1  # seconds a step may wait for others, whatever a step costs


@dataclass
class _Cadence:
    """One session's recent steps at this peer."""

    here: bool = False  # a step of it is waiting or computing
    finished: float | None = None  # when its last step finished
    aways: deque[float] = field(default_factory=lambda: deque(maxlen=AWAY_SAMPLES))

    def expected(self) -> float | None:
        """When its next step should arrive, if it is away and has a cadence."""
        if self.here or self.finished is None or not self.aways:
            return None
        return self.finished + statistics.median(self.aways)


class StepGathering:
    def __init__(self) -> None:
        self._sessions: dict[str, _Cadence] = {}
        self._steps: deque[float] = deque(maxlen=STEP_SAMPLES)

    def arrived(self, session_id: str, now: float) -> None:
        cadence = self._sessions.setdefault(session_id, _Cadence())
        if cadence.finished is not None and not cadence.here:
            cadence.aways.append(now - cadence.finished)
        cadence.here = True

    def finished(self, session_id: str, now: float, compute_seconds: float | None) -> None:
        """A step of the session finished at `now`; a one-token step's batch computed
        `compute_seconds` (None for other steps: a prompt tells nothing of a merge)."""
        if (cadence := self._sessions.get(session_id)) is not None:
            cadence.here, cadence.finished = False, now
        if compute_seconds is not None:
            self._steps.append(compute_seconds)

    def forget(self, session_id: str) -> None:
        """The session closed."""
        self._sessions.pop(session_id, None)

    def window(self) -> float:
        """How long a step may wait for others: `WAIT_STEPS` recent step times, at most
        `MAX_WAIT` (0 before any step: nothing to go by)."""
        return min(WAIT_STEPS * statistics.median(self._steps), MAX_WAIT) if self._steps else 0.0

    def awaited(self, now: float, window: float) -> list[str]:
        """The sessions away now and expected back within `window`, late by less than it."""
        return [
            session_id
            for session_id, cadence in self._sessions.items()
            if (expected := cadence.expected()) is not None and abs(expected - now) <= window
        ]
