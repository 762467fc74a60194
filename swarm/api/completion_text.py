"""The text of a completion, as its tokens come: what may be sent, and where it stops.

The text is always the decode of the tokens so far (special tokens skipped), cut before the
first stop sequence, which OpenAI's API leaves out of the text. While tokens come, the end of
the text is held back as long as it may still turn out to be the start of a stop sequence,
or is half a character (U+FFFD, the rest of its bytes in the next token), so that what was
sent is never taken back: the pieces sent add up to the final text.
"""

from __future__ import annotations

from typing import Any


class CompletionText:
    """Feed it tokens (`add`); it hands out the text that is sure so far."""

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.tokens: list[int] = []
        self.text = ""  # the whole text so far, cut before a stop sequence
        self.stopped = False  # a stop sequence came: the text ends here
        self.sent = ""

    def add(self, token: int) -> str:
        """Take one more token; return the text that became sure ("" if none)."""
        if self.stopped:
            return ""
        self.tokens.append(token)
        text = str(self.tokenizer.decode(self.tokens, skip_special_tokens=True))
        cut = min((i for s in self.stop if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return self._send(len(self.text))
        self.text = text
        return self._send(len(text) - self._held_back(text))

    def finish(self) -> str:
        """The rest of the text, once no token will come."""
        return self._send(len(self.text))

    def _held_back(self, text: str) -> int:
        """How many characters at the end may still change or start a stop sequence."""
        held = len(text) - len(text.rstrip("\ufffd"))
        for stop in self.stop:
            held = max(held, next((k for k in range(len(stop) - 1, 0, -1)
                                   if text.endswith(stop[:k])), 0))  # fmt: skip
        return held

    def _send(self, end: int) -> str:
        sure = self.text[:end]
        if not sure.startswith(self.sent):  # an earlier piece decoded otherwise: wait
            return ""
        piece, self.sent = sure[len(self.sent) :], sure
        return piece
