"""`ThreadChoice`: how many torch threads a peer's steps run on, chosen by how fast they ran
lately (a peer has one choice for its one-token steps, one for longer ones: prompts, drafts).

A peer measures its one-token steps alone at start (`peer.throughput`) and prefers the
fewest threads within 5 % of the fastest (longer steps: all threads). Alone on its cores
that stays right; but once other processes compute at the same time (the other peers of a
chain on one machine while several sessions generate through it, the client), a thread that
waits for a core stalls every parallel region of the step: on 2 cores, with 4 sessions
generating through 2 SmolLM2 peers, a peer's 15-block step took about 300 ms on 2 threads
and 30 ms on 1. So the choice follows the steps: each step's seconds are recorded under its
thread count, and the count whose last `SAMPLES` steps have the lowest median runs the next
ones (the choice moves when the other's median is `MARGIN` lower, so that steps that waited
for a core now and then do not make it flap). The other count is tried whenever the chosen
one has run 2 / `TRY_SHARE` times as long as the other's last step took: a try runs two
steps (the first step after a change of count pays for the change, so it is not timed), so
trying costs about 2 % of the time at most, and the other is found again soon after it has
become the faster.

Steps are timed apart by situation: by their size in tokens (their rows times their tokens a
row: 1; 2; 3-4; 5-8; ...: bigger steps gain more from threads), and while the peer's only
session steps (one generation, a batch of rows, beams: the peers of a chain take turns) or
several do (their chains' peers compute at once), so that what one situation taught does not
hold another back. A peer alone starts from the measured count; where several sessions step,
it starts from the other (one thread: the chain's other peers on the machine are likely
computing too), and tries the measured count after each step while that has fewer than
`SAMPLES` steps timed and may be the faster (its median under twice the chosen's). Pure
bookkeeping: `SpanBackend` asks `threads()` and `record()`s.
"""

from __future__ import annotations

import math
import statistics
from collections import deque

SAMPLES = 5  # the recent steps of a count whose median stands for it
MARGIN = 0.1  # how much faster the other count's median must be for the choice to move
TRY_SHARE = 0.02  # of the time on the chosen count, what trying the other may cost


class ThreadChoice:
    def __init__(self, preferred: int, other: int | None = None) -> None:
        """Choose between `preferred` threads (the measured count) and `other`, if given and
        different: steps alone begin on the first, crowded steps on the second."""
        self.counts = (preferred,) if other in (None, preferred) else (preferred, other)
        self._situations: dict[tuple[int, bool], _Timings] = {}
        self._ran: int | None = None  # the count of the last step

    def chosen(self, size: int = 1, crowded: bool = False) -> int:
        """The count whose recent steps of `size` tokens ran fastest, while the peer's only
        session steps, or while several do (`crowded`)."""
        return self._timings(size, crowded).chosen

    def threads(self, size: int = 1, crowded: bool = False) -> int:
        """The count a step of `size` tokens runs on: the chosen one, or, when it is time,
        the other."""
        return self._timings(size, crowded).threads()

    def record(self, threads: int, seconds: float, size: int = 1, crowded: bool = False) -> None:
        """A step of `size` tokens ran on `threads` for `seconds`. A step right after one on
        another count is not timed: it pays for the change."""
        changed, self._ran = self._ran not in (None, threads), threads
        if threads in self.counts and not changed:
            self._timings(size, crowded).record(threads, seconds)

    def _timings(self, size: int, crowded: bool) -> _Timings:
        situation = ((size - 1).bit_length(), crowded)  # tokens 1; 2; 3-4; 5-8; ...
        if situation not in self._situations:
            counts = self.counts[::-1] if crowded else self.counts  # crowded: the fewest first
            self._situations[situation] = _Timings(counts, eager=crowded)
        return self._situations[situation]


class _Timings:
    """The recent steps of each count, in one situation."""

    def __init__(self, counts: tuple[int, ...], eager: bool) -> None:
        self.counts = counts
        self.eager = eager  # try a count that may be the faster until it has `SAMPLES` steps
        self._recent: dict[int, deque[float]] = {c: deque(maxlen=SAMPLES) for c in counts}
        self.chosen = counts[0]
        self._on_chosen = 0.0  # seconds on the chosen count since the other last ran
        self._trying: int | None = None  # the other count, until one of its steps is timed

    def threads(self) -> int:
        if self._trying is not None:
            return self._trying
        if self._on_chosen > 0:  # a step on the chosen count was timed since the last try
            for count in self.counts:
                if count != self.chosen and self._due(count):
                    self._trying = count
                    return count
        return self.chosen

    def _due(self, count: int) -> bool:
        """Whether to try `count` now: eagerly while it may be the faster (its median under
        twice the chosen's) and has fewer than `SAMPLES` steps timed, or once the chosen one
        has run 2 / `TRY_SHARE` times its last step (or the chosen's, if it has none)."""
        recent, chosen = self._recent[count], self._recent[self.chosen]
        may_be_faster = not recent or self._median(count) < 2 * self._median(self.chosen)
        if self.eager and len(recent) < SAMPLES and may_be_faster:
            return True
        return self._on_chosen * TRY_SHARE >= 2 * (recent or chosen)[-1]

    def record(self, threads: int, seconds: float) -> None:
        if threads == self._trying:
            self._trying = None
        self._on_chosen = self._on_chosen + seconds if threads == self.chosen else 0.0
        self._recent[threads].append(seconds)
        fastest = min(self.counts, key=self._median)
        if self._median(fastest) < self._median(self.chosen) * (1 - MARGIN):
            self.chosen = fastest

    def _median(self, count: int) -> float:
        recent = self._recent[count]
        return statistics.median(recent) if recent else math.inf
