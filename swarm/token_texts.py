"""`TokenTexts`: each token's part of the text, as tokens come. Pure (over a tokenizer).

A token's part is what decoding it adds after the tokens before it (a few of them, for the
spaces between words), so the parts add up to the decode of them all. A token that leaves a
character half done (its bytes end in the middle of one) adds nothing yet, and the one that
completes it adds the whole character.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TokenTexts"]


class TokenTexts:
    """Feed it tokens (`add`); `peek` says what a token would add, without taking it."""

    def __init__(self, tokenizer: Any, context: int = 4) -> None:
        self.tokenizer = tokenizer
        self.context = context
        self.tokens: list[int] = []
        self.given = 0  # tokens whose text is given
        self._before = ""  # the decode of the context of the next token
        self._peeked: dict[int, str | None] = {}  # what tokens would add next

    def peek(self, token: int) -> str | None:
        """What `token` would add next: its text, "" if it leaves a character half done,
        None if it would change the text given before it."""
        if token not in self._peeked:
            self._peeked[token] = self._part(token)
        return self._peeked[token]

    def add(self, token: int) -> str:
        """Take `token`; its part of the text."""
        text = self.peek(token)
        self.tokens.append(token)
        self._peeked.clear()
        if text:
            self.given = len(self.tokens)
            start = max(0, self.given - self.context)
            self._before = str(self.tokenizer.decode(self.tokens[start : self.given]))
        return text or ""

    def _part(self, token: int) -> str | None:
        start = max(0, self.given - self.context)
        after = str(self.tokenizer.decode([*self.tokens[start:], token]))
        if not after.startswith(self._before):
            return None
        return "" if after.endswith("\ufffd") else after[len(self._before) :]
