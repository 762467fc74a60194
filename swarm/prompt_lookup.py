"""Prompt lookup: drafts copied from earlier in the text, for speculative decoding without an
assistant model (transformers' `prompt_lookup_num_tokens`). Pure.

Text that repeats what came before (a document quoted, code edited, a list continued) can be
drafted by finding its last `max_ngram` tokens (then fewer) where they came before and
copying what followed them there. They are looked up first in a prediction of the answer,
if one was given (OpenAI's predicted outputs: `swarm api`'s `prediction`), then in the
sequence itself; while the answer so far is the prediction's beginning, the draft is what
comes next in the prediction.

The drafts are copied, not drawn from a distribution: the model's own choice at each place
(its greedy token, or its draw from the request's generator) is kept while it equals the
draft, so the tokens are exactly those of decoding without drafts, sampled ones included,
in fewer trips through the swarm when the drafts are right.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .errors import GenerationError

__all__ = ["DEFAULT_NGRAM", "PromptLookup", "lookup"]

DEFAULT_NGRAM = 2  # transformers' default `max_matching_ngram_size`


@dataclass(frozen=True)
class PromptLookup:
    """Proposes drafts for a sequence whose answer begins at token `begin` (see the module
    doc); a `speculative_tokens` drafter."""

    max_ngram: int = DEFAULT_NGRAM
    prediction: tuple[int, ...] = ()  # token ids the answer is expected to resemble
    begin: int = 0  # where the answer begins, in the sequences proposed for
    draws: ClassVar[bool] = False  # copied drafts: the model's own choice checks them

    def __post_init__(self) -> None:
        if type(self.max_ngram) is not int or self.max_ngram < 1:
            raise GenerationError(f"max_matching_ngram_size must be >= 1, not {self.max_ngram!r}")
        if not all(type(token) is int and token >= 0 for token in self.prediction):
            raise GenerationError("prediction_ids must be token ids")

    def propose(self, input_ids: torch.Tensor, count: int, sampler: Any = None) -> list[int]:
        """Up to `count` drafts after `input_ids` (`[1, length]`); maybe none."""
        tokens = input_ids[0].tolist()
        answered = tuple(tokens[self.begin :])
        if len(answered) < len(self.prediction) and self.prediction[: len(answered)] == answered:
            return list(self.prediction[len(answered) : len(answered) + count])
        return lookup(tokens, self.prediction, count, self.max_ngram)


def lookup(
    tokens: Sequence[int], prediction: Sequence[int], count: int, max_ngram: int
) -> list[int]:
    """The `count` tokens (or fewer) that follow the first place where the last n tokens of
    `tokens` (n from `max_ngram` down to 1) come in `prediction`, else earlier in `tokens`."""
    for size in range(min(max_ngram, len(tokens)), 0, -1):
        tail = list(tokens[-size:])
        for source in (prediction, tokens):
            if found := _following(source, tail, count):
                return found
    return []


def _following(source: Sequence[int], tail: list[int], count: int) -> list[int]:
    """What follows the first `tail` in `source` that something follows (never the very end:
    in the sequence itself, that is the tail)."""
    size, last = len(tail), tail[-1]
    for end in range(size - 1, len(source) - 1):  # where such a `tail` would end
        if source[end] == last and list(source[end - size + 1 : end + 1]) == tail:
            return list(source[end + 1 : end + 1 + count])
    return []
