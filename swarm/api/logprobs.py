"""Log probabilities in OpenAI's two shapes: the completions API's four lists (`tokens`,
`token_logprobs`, `top_logprobs`, `text_offset`) and the chat API's list of entries. Pure.

The figures are the model's own distribution, before temperature and `top_p`, as the records
of `swarm.generation.TokenLogprob` hold them. Entries follow the text: special tokens (which
the text skips) have none, and neither do tokens after a stop sequence cut the text. A
token's text is what it adds to the text, so that the tokens add up to it (a character made
of several tokens shows whole in the last of them), and `text_offset` counts those texts
(with `echo`, from the prompt's tokens: the prompt itself for the byte-level tokenizers of
most models). The likeliest tokens show as each decodes alone. A streamed answer's chunks
carry the entries of the tokens that their text completes (`LogprobStream`), so that the
entries of all its chunks are those of the whole answer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..generation import TokenLogprob
from ..token_texts import TokenTexts

__all__ = [
    "LogprobStream",
    "ScoredToken",
    "chat_logprobs",
    "completion_logprobs",
    "scored_tokens",
]


@dataclass(frozen=True)
class ScoredToken:
    """One token of the text: its own text, and its record (None for a prompt's first
    token, which nothing predicts)."""

    text: str
    record: TokenLogprob | None


def scored_tokens(
    tokenizer: Any,
    tokens: Sequence[int],
    records: Sequence[TokenLogprob | None],
    length: float = math.inf,
) -> list[ScoredToken]:
    """The tokens that make the decode of `tokens` (cut after `length` characters, if a stop
    sequence cut it), each with its part of that text and its record."""
    stream = LogprobStream(tokenizer)
    for token, record in zip(tokens, records, strict=True):
        stream.add(token, record)
    return stream.take(length, final=True)


class LogprobStream:
    """The scored tokens of a text that grows token by token (`add`), handed out (`take`) as
    the text that carries them is: in order, each once."""

    def __init__(self, tokenizer: Any) -> None:
        self.special = set(getattr(tokenizer, "all_special_ids", ()))
        self.texts = TokenTexts(tokenizer)
        self.waiting: list[ScoredToken] = []  # scored, not handed out yet
        self.offset = 0  # where the first waiting token's text begins

    def add(self, token: int, record: TokenLogprob | None) -> None:
        if token not in self.special:  # the text skips it
            self.waiting.append(ScoredToken(self.texts.add(token), record))

    def take(self, length: float, *, final: bool = False) -> list[ScoredToken]:
        """The waiting tokens that the first `length` characters of the text hold whole; or,
        `final`ly, every one that begins within them."""
        taken = 0
        for token in self.waiting:
            end = self.offset + len(token.text)
            if self.offset >= length or (end > length and not final):
                break
            self.offset = end
            taken += 1
        handed, self.waiting = self.waiting[:taken], self.waiting[taken:]
        return handed


def completion_logprobs(
    tokenizer: Any, scored: Sequence[ScoredToken], offset: int = 0
) -> dict[str, Any]:
    """The completions API's lists; `offset`: where the first token's text begins."""
    offsets = [offset]
    for token in scored[:-1]:
        offsets.append(offsets[-1] + len(token.text))
    return {
        "tokens": [token.text for token in scored],
        "token_logprobs": [None if t.record is None else t.record.logprob for t in scored],
        "top_logprobs": [
            None
            if t.record is None
            else {str(tokenizer.decode([id_])): logprob for id_, logprob in t.record.top}
            for t in scored
        ],
        "text_offset": offsets[: len(scored)],
    }


def chat_logprobs(tokenizer: Any, scored: Sequence[ScoredToken]) -> dict[str, Any]:
    def entry(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = []
    for token in scored:
        if token.record is None:
            continue
        top = [entry(str(tokenizer.decode([id_])), logprob) for id_, logprob in token.record.top]
        content.append(entry(token.text, token.record.logprob) | {"top_logprobs": top})
    return {"content": content, "refusal": None}
