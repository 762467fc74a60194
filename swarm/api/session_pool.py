"""Inference sessions kept open between API requests, so that a conversation's next turn
sends only its new tokens.

OpenAI's clients send the whole conversation with every request. After an answer, its
session (the prompt and the answer's tokens in the peers' caches) waits here; a request
whose tokens begin with all of a waiting session's prompt takes that session, which rewinds
to where the two part (within the answer, or at its end) and sends only the rest. So every
turn of a conversation goes on in one session, also where the chat template renders the
previous answer to other tokens than the model generated, or a stop sequence cut it (the
session holds tokens after the cut). The same prompt asked again opens a session of its
own, so that it is computed as the first time, to the last bit. A request that goes on from
no waiting session but shares at least `MIN_FORK_TOKENS` with one (a system prompt, a
conversation's beginning) is lent that session to fork: a new session whose peers copy
those tokens' caches, so that they are computed once. Waiting sessions hold cache on the
peers, so at most `max_idle` wait, each at most `idle_seconds`, the oldest leaving first,
and sooner when a new session finds no room on the peers. Pure bookkeeping: the server
opens, forks and closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

T = TypeVar("T")

MIN_FORK_TOKENS = 16  # shared with a waiting session, for a request to fork it


@dataclass(frozen=True)
class IdleSession:
    session: Any  # an open `InferenceSession`
    tokens: tuple[int, ...]  # all it holds: prompts and answers so far
    max_length: int  # the most tokens it takes
    since: float  # when it began to wait
    asked: int  # of `tokens`, those before its last answer (where its last prompt ends)


class SessionPool:
    def __init__(self, max_idle: int, idle_seconds: float, clock: Callable[[], float]) -> None:
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._waiting: list[IdleSession] = []  # oldest first

    def __len__(self) -> int:
        return len(self._waiting)

    def take(self, tokens: Sequence[int], needed: int) -> IdleSession | None:
        """The waiting session whose last prompt `tokens` begin with and go on after, and
        whose history they share most of, if it takes `needed` tokens in all; it waits no
        more. Its `tokens` are those shared: the session is to rewind to them."""
        found = self._remove_best(
            tokens[:-1], lambda idle, shared: shared >= idle.asked and needed <= idle.max_length
        )
        if found is None:
            return None
        idle, shared = found
        return replace(idle, tokens=idle.tokens[:shared])

    def lend(self, tokens: Sequence[int]) -> tuple[IdleSession, int] | None:
        """The waiting session that shares most of `tokens`, at least `MIN_FORK_TOKENS` but
        not all (the same prompt again is computed afresh), and how many, to fork; it waits
        no more until `put` again."""
        return self._remove_best(tokens, lambda _, shared: MIN_FORK_TOKENS <= shared < len(tokens))

    def _remove_best(
        self, tokens: Sequence[int], fits: Callable[[IdleSession, int], bool]
    ) -> tuple[IdleSession, int] | None:
        """Of the waiting sessions that `fits` (given how many of `tokens` each shares), the
        one that shares most, and how many; it waits no more."""
        best = most_shared(self._waiting, lambda idle: idle.tokens, tokens, fits)
        if best is not None:
            self._waiting.remove(best[0])
        return best

    def put(
        self, session: Any, tokens: Sequence[int], max_length: int, asked: int
    ) -> list[IdleSession]:
        """Let `session` wait (`asked`: its tokens before its last answer); returns the
        sessions this pushes out, to be closed."""
        idle = IdleSession(session, tuple(tokens), max_length, self.clock(), asked)
        self._waiting.append(idle)
        pushed_out = self._waiting[: max(0, len(self._waiting) - self.max_idle)]
        del self._waiting[: len(pushed_out)]
        return pushed_out

    def oldest(self) -> IdleSession | None:
        """The session that has waited longest, which waits no more (to make room)."""
        return self._waiting.pop(0) if self._waiting else None

    def expired(self) -> list[IdleSession]:
        """The sessions that waited `idle_seconds` or more, which wait no more."""
        deadline = self.clock() - self.idle_seconds
        gone = [idle for idle in self._waiting if idle.since <= deadline]
        self._waiting = [idle for idle in self._waiting if idle.since > deadline]
        return gone

    def drain(self) -> list[IdleSession]:
        """Every waiting session (the server stops)."""
        gone, self._waiting = self._waiting, []
        return gone


def most_shared(
    candidates: Iterable[T],
    held: Callable[[T], Sequence[int]],
    tokens: Sequence[int],
    fits: Callable[[T, int], bool],
) -> tuple[T, int] | None:
    """Of the `candidates` that `fits` (given how many of `tokens` the tokens each `held`
    begin with), the one that shares most, and how many."""
    shares = [(candidate, shared_prefix(held(candidate), tokens)) for candidate in candidates]
    fitting = [(candidate, shared) for candidate, shared in shares if fits(candidate, shared)]
    return max(fitting, key=lambda pair: pair[1]) if fitting else None


def shared_prefix(held: Sequence[int], tokens: Sequence[int]) -> int:
    """How many tokens `held` and `tokens` begin with alike."""
    pairs = enumerate(zip(held, tokens, strict=False))
    return next((at for at, (a, b) in pairs if a != b), min(len(held), len(tokens)))
