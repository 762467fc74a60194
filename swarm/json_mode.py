"""JSON mode: each new token is chosen among those that keep the text the beginning of a
value of a JSON schema (by default, any JSON object), and generation ends when it closes.

`JsonConstraint` follows the text of the tokens taken (`TokenTexts`) in a `JsonPrefix`.
`choose` draws as the generation does (`choose_tokens`), leaving out the tokens that do not
fit: greedy, the likeliest that fits; sampling, a draw from the processed scores
renormalised over the tokens that fit. It draws by rejection (a token that does not fit is
masked and the draw repeated), which has that very distribution and checks only the tokens
drawn; after `MAX_DRAWS` misses it checks every token the processors left. If none of those
fits (top-k kept only tokens that break the JSON), it takes the likeliest token that fits by
the scores after the rules (penalties, bans, suppressed tokens, the caller's processors) and
before sampling's warpers, never one that the rules made -inf (`suppress_tokens`,
`bad_words_ids`, EOS before `min_new_tokens`); if no token the rules allow fits, that is a
`GenerationError`. EOS fits only once the text is a whole value, other special tokens
never; a token that leaves a character half done fits only where a character beyond ASCII
may come.

Those scans of the vocabulary can be slow (a costly pattern in the schema), and the stopping
criteria are checked only between tokens: given the generation's deadline (`max_time`), a
scan reads the clock every `CLOCK_EVERY` tokens and gives up once it has passed, and
`choose` returns None, which ends the generation as `max_time` would.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch

from .errors import GenerationError
from .json_prefix import MAX_BLANK, JsonPrefix
from .json_schema import ANY_OBJECT, Node
from .token_texts import TokenTexts

__all__ = ["JsonConstraint"]

logger = logging.getLogger(__name__)

MAX_DRAWS = 32  # rejected draws before every candidate is checked at once
CLOCK_EVERY = 256  # tokens a scan checks between two looks at the clock


class JsonConstraint:
    """The JSON value that a generation's tokens spell, so far."""

    def __init__(
        self,
        tokenizer: Any,
        eos_token_ids: Collection[int],
        schema: Node = ANY_OBJECT,
        max_blank: int = MAX_BLANK,
    ) -> None:
        if tokenizer is None:
            raise GenerationError("JSON mode needs the tokenizer (tokenizer=...)")
        self.texts = TokenTexts(tokenizer)
        self.eos = frozenset(eos_token_ids)
        self.special = frozenset(getattr(tokenizer, "all_special_ids", ())) - self.eos
        self.state = JsonPrefix.start(schema, max_blank)

    @property
    def complete(self) -> bool:
        return self.state.complete

    def fits(self, token: int) -> JsonPrefix | None:
        """The state after `token`, or None if it does not fit."""
        if token in self.eos:
            return self.state if self.state.whole else None
        if token in self.special:  # not text
            return None
        text = self.texts.peek(token)
        if text is None:
            return None
        if not text:
            return self.state if self.state.wide_char_next else None  # its next byte
        return self.state.feed(text)

    def take(self, token: int) -> None:
        state = self.fits(token)
        if state is None:
            raise GenerationError(f"token {token} does not fit the JSON so far")
        self.texts.add(token)
        self.state = state

    def choose(
        self,
        scores: torch.Tensor,
        ruled: torch.Tensor,
        draw: Callable[[torch.Tensor], int],
        deadline: float | None = None,
    ) -> int | None:
        """The next token (see the module doc): `scores` processed and `ruled` after the
        rules only (before the warpers), both `[1, V]`; `draw(scores)` is the generation's
        own choice (greedy or sampled). None if a scan found `deadline` (a `time.time()`)
        passed before it found the token."""
        token = draw(scores)  # the generation's own choice, which most often fits as it is
        if self.fits(token) is not None:
            return token
        scores = scores.clone()  # only now: each tensor op over the vocabulary costs
        for _ in range(MAX_DRAWS - 1):
            scores[0, token] = -math.inf
            if not torch.isfinite(scores).any():
                break
            token = draw(scores)
            if self.fits(token) is not None:
                return token
        candidates = torch.isfinite(scores[0]).nonzero().flatten().tolist()
        fitting = self._fitting(candidates, deadline)
        if fitting is None:
            return None
        if fitting:
            masked = torch.full_like(scores, -math.inf)
            masked[0, fitting] = scores[0, fitting]
            return draw(masked)
        logger.debug("no token the processors kept fits the JSON: the likeliest that fits")
        allowed = (ruled[0] > -math.inf).nonzero().flatten()  # not NaN either
        ranked = allowed[ruled[0, allowed].argsort(descending=True, stable=True)].tolist()
        first = self._fitting(ranked, deadline, first=True)
        if first is None:
            return None
        if first:
            return first[0]
        tail = self.texts.tokenizer.decode(self.texts.tokens[-16:])
        raise GenerationError(
            "no token of the vocabulary that the logits processors allow (sampling's cutoffs "
            f"aside) continues the JSON after ...{tail!r}: the schema leaves no way on from "
            "there (a pattern whose strings maxLength or uniqueness leave too few of, further "
            "on than the checker looks?), or suppress_tokens, bad_words_ids, min_new_tokens "
            "or a logits processor of yours banned every way on"
        )

    def _fitting(
        self, tokens: Sequence[int], deadline: float | None, *, first: bool = False
    ) -> list[int] | None:
        """Those of `tokens` that fit, in their order (with `first`, the first only), or
        None once `deadline` has passed: the clock is read every `CLOCK_EVERY` tokens."""
        found = []
        for index, token in enumerate(tokens):
            if deadline is not None and index % CLOCK_EVERY == 0 and time.time() > deadline:
                return None
            if self.fits(token) is not None:
                found.append(token)
                if first:
                    break
        return found
