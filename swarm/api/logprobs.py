"""Log probabilities in OpenAI's two shapes: the completions API's four lists (`tokens`,
`token_logprobs`, `top_logprobs`, `text_offset`) and the chat API's list of entries. Pure.

The figures are the model's own distribution, before temperature and `top_p`, as the records
of `swarm.generation.TokenLogprob` hold them. Entries follow the text: special tokens (which
the text skips) have none, and neither do tokens after a stop sequence cut the text. A
token's text is what it adds to the text, so that the tokens add up to it (a character made
of several tokens shows whole in the last of them), and `text_offset` counts those texts
(with `echo`, from the prompt's tokens: the prompt itself for the byte-level tokenizers of
most models). The likeliest tokens show as each decodes alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..generation import TokenLogprob

__all__ = ["ScoredToken", "chat_logprobs", "completion_logprobs", "scored_tokens"]


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
    special = set(getattr(tokenizer, "all_special_ids", ()))
    texts = _token_texts(tokenizer, [token for token in tokens if token not in special])
    scored: list[ScoredToken] = []
    offset = 0
    kept = (record for token, record in zip(tokens, records, strict=True) if token not in special)
    for text, record in zip(texts, kept, strict=True):
        if offset >= length:
            break
        scored.append(ScoredToken(text, record))
        offset += len(text)
    return scored


def _token_texts(tokenizer: Any, tokens: Sequence[int], context: int = 4) -> list[str]:
    """Each token's part of the decode of `tokens`: what decoding it adds after the tokens
    before (a few of them, for the spaces between words); a token that leaves a character
    half done adds nothing, and the one that completes it adds the whole character."""
    texts = []
    given = 0  # tokens whose text is given
    for end in range(1, len(tokens) + 1):
        start = max(0, given - context)
        before = str(tokenizer.decode(tokens[start:given]))
        after = str(tokenizer.decode(tokens[start:end]))
        if after.endswith("\ufffd") or not after.startswith(before):
            texts.append("")
            continue
        texts.append(after[len(before) :])
        given = end
    return texts


def completion_logprobs(tokenizer: Any, scored: Sequence[ScoredToken]) -> dict[str, Any]:
    offsets = [0]
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
