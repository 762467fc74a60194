"""Inference sessions kept open between API requests, so that a conversation's next turn
sends only its new tokens.

OpenAI's clients send the whole conversation with every request. After an answer, its
session (the prompt and the answer's tokens in the peers' caches) waits here; a request
whose tokens begin with all of a waiting session's tokens, and go on after them, takes that
session and sends only the rest. When the chat template renders the previous answer to the
tokens the model generated (real models mostly do), every turn of a conversation goes on in
one session. Waiting sessions hold cache on the peers, so at most `max_idle` wait, each at
most `idle_seconds`, the oldest leaving first, and sooner when a new session finds no room
on the peers. Pure bookkeeping: the server opens and closes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class IdleSession:
    session: Any  # an open `InferenceSession`
    tokens: tuple[int, ...]  # all it holds: prompts and answers so far
    max_length: int  # the most tokens it takes
    since: float  # when it began to wait


class SessionPool:
    def __init__(self, max_idle: int, idle_seconds: float, clock: Callable[[], float]) -> None:
        self.max_idle = max_idle
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._waiting: list[IdleSession] = []  # oldest first

    def __len__(self) -> int:
        return len(self._waiting)

    def take(self, tokens: Sequence[int], needed: int) -> IdleSession | None:
        """The waiting session with the longest history that `tokens` begin with and go on
        after, if it takes `needed` tokens in all; it waits no more."""
        fitting = [
            idle
            for idle in self._waiting
            if len(idle.tokens) < len(tokens)
            and tuple(tokens[: len(idle.tokens)]) == idle.tokens
            and needed <= idle.max_length
        ]
        if not fitting:
            return None
        chosen = max(fitting, key=lambda idle: len(idle.tokens))
        self._waiting.remove(chosen)
        return chosen

    def put(self, session: Any, tokens: Sequence[int], max_length: int) -> list[IdleSession]:
        """Let `session` wait; returns the sessions this pushes out, to be closed."""
        self._waiting.append(IdleSession(session, tuple(tokens), max_length, self.clock()))
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
