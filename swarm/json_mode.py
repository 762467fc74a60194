"""JSON mode: each new token is chosen among those that keep the text the beginning of a
value of a JSON schema (by default, any JSON object), and generation ends when it closes.

`JsonConstraint` follows the text of the tokens taken (`TokenTexts`) in a `JsonPrefix`.
`choose` draws as the generation does (`choose_tokens`), leaving out the tokens that do not
fit: greedy, the likeliest that fits; sampling, a draw from the processed scores
renormalised over the tokens that fit. It draws by rejection (a token that does not fit is
masked and the draw repeated), which has that very distribution and checks only the tokens
drawn; after `MAX_DRAWS` misses it checks every token the processors left. If none of those
fits (top-k kept only tokens that break the JSON), it takes the likeliest token that fits by
the raw logits, so that the text always stays JSON. EOS fits only once the text is a whole
value, other special tokens never; a token that leaves a character half done fits only where
a character beyond ASCII may come.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection
from typing import Any

import torch

from .errors import GenerationError
from .json_prefix import MAX_BLANK, JsonPrefix
from .json_schema import ANY_OBJECT, Node
from .token_texts import TokenTexts

__all__ = ["JsonConstraint"]

logger = logging.getLogger(__name__)

MAX_DRAWS = 32  # rejected draws before every candidate is checked at once


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
        self, scores: torch.Tensor, logits: torch.Tensor, draw: Callable[[torch.Tensor], int]
    ) -> int:
        """The next token (see the module doc): `scores` processed and `logits` raw, both
        `[1, V]`; `draw(scores)` is the generation's own choice (greedy or sampled)."""
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
        fitting = [token for token in candidates if self.fits(token) is not None]
        if fitting:
            masked = torch.full_like(scores, -math.inf)
            masked[0, fitting] = scores[0, fitting]
            return draw(masked)
        logger.debug("no token the processors kept fits the JSON: the likeliest that fits")
        for token in logits[0].argsort(descending=True).tolist():
            if self.fits(token) is not None:
                return int(token)
        tail = self.texts.tokenizer.decode(self.texts.tokens[-16:])
        raise GenerationError(
            f"no token of the vocabulary continues the JSON after ...{tail!r}: the schema "
            "leaves no way on from there (a pattern whose strings maxLength or uniqueness "
            "leave too few of, further on than the checker looks?)"
        )
