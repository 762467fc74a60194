"""Speculative decoding: a small local model drafts tokens, the swarm checks them in one step.

Per round, the assistant model (on the client) proposes `k` tokens (or `swarm.prompt_lookup`
copies up to `k` from earlier in the text; it may find none). One step through the
swarm runs the tokens not yet seen plus the `k` drafts, and gives the model's own
distribution after each of them. The drafts it takes are kept, plus one token of its own:
1 to `k + 1` tokens for one trip through the chain instead of one. The peers then drop
the rejected drafts from their caches (the next step's `position`; the client's copy of
each hop's history likewise). The logits processors and stopping criteria apply position
by position, as in `generate_tokens`.

Greedy decoding: the assistant drafts its greedy tokens, and a draft is taken while it is
the model's own choice, so the tokens are the model's greedy ones whatever the assistant
proposes. Sampling (speculative sampling, Leviathan et al. 2023, as transformers does it):
the assistant draws its drafts from its own distribution q (through the same processors),
the model keeps draft x with probability min(1, p(x) / q(x)) and, at the first it rejects,
draws from what p has beyond q (max(0, p - q), renormalised). Each token is then distributed
exactly as sampling from the model alone would draw it; the draws come from the request's
seeded generator.

Copied drafts (prompt lookup) come from no distribution: the model's own choice at each
place, greedy or drawn, is kept while it equals the draft. Each copied draft costs the
step a position whether it is taken or not, and text that does not repeat finds spurious
matches, so their number adapts: after a round whose drafts were not all taken, the next
proposes one more than were taken; after one whose drafts were, twice as many, up to the
most asked for. (An assistant's drafts keep their number, as transformers' "constant"
schedule does.)

`Drafter` keeps the assistant's cache between rounds, cut back to what the sequence still
shares with it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
import trio
from transformers import DynamicCache, LogitsProcessorList

from peer.span import cache_keyword

from .generation import (
    GenerationError,
    GenerationState,
    HiddenStatePipeline,
    LanguageModelHead,
    common_prefix,
    logits_after,
)
from .sampling import (
    SamplingConfig,
    build_logits_processors,
    build_stopping_criteria,
    choose_tokens,
    sampling_generator,
)

__all__ = [
    "DraftSampler",
    "Drafter",
    "Proposer",
    "TruncatablePipeline",
    "check_drafting",
    "keep_or_redraw",
    "speculative_tokens",
]

DEFAULT_DRAFT_TOKENS = 4


class TruncatablePipeline(HiddenStatePipeline, Protocol):
    """A pipeline that can drop the positions after the first `tokens` before its next step."""

    def truncate(self, tokens: int) -> None: ...


@dataclass
class DraftSampler:
    """Draws drafts as sampling does (through `processors`), keeping the distribution each
    was drawn from (q), for the model's check."""

    processors: LogitsProcessorList
    generator: torch.Generator
    drawn_from: list[torch.Tensor] = field(default_factory=list)

    def draw(self, prefix: torch.Tensor, logits: torch.Tensor) -> int:
        """A token after `prefix` (`[1, length]`), from the assistant's `logits` there."""
        scores = self.processors(cast(torch.LongTensor, prefix), logits[None].to(torch.float32))
        probabilities = torch.softmax(scores[0], dim=-1)
        self.drawn_from.append(probabilities)
        return int(torch.multinomial(probabilities, 1, generator=self.generator))


def keep_or_redraw(
    scores: torch.Tensor,
    draft: int,
    drawn_from: torch.Tensor,
    uniform: float,
    generator: torch.Generator,
) -> int:
    """Speculative sampling's check of one draft against the model's processed `scores`
    there (p): keep it if `uniform` (drawn in [0, 1)) is at most p(draft) / q(draft), else
    draw from max(0, p - q) renormalised. Returns the token taken (not the draft if it was
    rejected: the residual gives the draft no mass)."""
    p = torch.softmax(scores.to(torch.float32), dim=-1)
    size = p.shape[-1]  # an assistant's vocabulary may be padded otherwise
    q = torch.nn.functional.pad(drawn_from[:size], (0, max(0, size - drawn_from.shape[-1])))
    if draft < size and uniform <= float(p[draft] / q[draft]):
        return draft
    residual = (p - q).clamp(min=0)
    if float(residual.sum()) <= 0:  # p == q up to rounding: p itself
        residual = p
    return int(torch.multinomial(residual / residual.sum(), 1, generator=generator))


class Proposer(Protocol):
    """What drafts: an assistant model (`Drafter`) or prompt lookup."""

    @property
    def draws(self) -> bool:
        """Whether drafts are drawn from a distribution when sampling (checked by speculative
        sampling), or copied (checked by the model's own draw)."""
        ...

    def propose(
        self, input_ids: torch.Tensor, count: int, sampler: DraftSampler | None = None
    ) -> list[int]: ...


class Drafter:
    """The assistant model's proposals, from its own cache of the sequence so far."""

    draws = True

    def __init__(self, model: Any) -> None:
        self.model = model
        self._keyword = cache_keyword(model.forward)
        self._cache = DynamicCache()
        self._cached = torch.zeros(1, 0, dtype=torch.long)  # the token ids in the cache

    def propose(
        self, input_ids: torch.Tensor, count: int, sampler: DraftSampler | None = None
    ) -> list[int]:
        """The `count` tokens the assistant writes after `input_ids` (`[1, length]`):
        greedily, or drawn by `sampler`."""
        seen = min(common_prefix(self._cached, input_ids), input_ids.shape[1] - 1)
        if seen < self._cached.shape[1]:  # drop its rejected drafts (a negative count)
            self._cache.crop(seen - self._cached.shape[1])
        device = self.model.device
        fresh = input_ids[:, seen:]
        tokens: list[int] = []
        with torch.no_grad():
            for _ in range(count):
                logits = self.model(fresh.to(device), **{self._keyword: self._cache}).logits
                if sampler is None:
                    token = int(logits[0, -1].argmax())
                else:
                    prefix = torch.cat([input_ids, torch.tensor([tokens], dtype=torch.long)], 1)
                    token = sampler.draw(prefix, logits[0, -1].cpu())
                tokens.append(token)
                fresh = torch.tensor([[token]])
        self._cached = torch.cat([input_ids, torch.tensor([tokens[:-1]])], dim=1)
        return tokens


def check_drafting(config: SamplingConfig, input_ids: torch.Tensor, draft_tokens: int) -> None:
    """What drafts (an assistant model, prompt lookup) are for: greedy decoding or sampling
    of one sequence, 1 or more tokens a round."""
    if config.num_beams > 1:
        raise GenerationError(
            "an assistant model or prompt lookup drafts for greedy decoding or sampling, not beams"
        )
    if input_ids.shape[0] != 1:
        raise GenerationError("an assistant model or prompt lookup drafts for one sequence")
    if config.json_mode is not None:
        raise GenerationError("an assistant model or prompt lookup does not draft in JSON mode")
    if not isinstance(draft_tokens, int) or draft_tokens < 1:
        raise GenerationError(f"drafts a round must be >= 1, not {draft_tokens!r}")


async def speculative_tokens(
    head: LanguageModelHead,
    pipeline: TruncatablePipeline,
    state: GenerationState,
    config: SamplingConfig,
    drafter: Proposer,
    draft_tokens: int = DEFAULT_DRAFT_TOKENS,
    tokenizer: Any = None,
) -> AsyncGenerator[int, None]:
    """Yield the new token ids as rounds confirm them, extending `state` as
    `generate_tokens` does."""
    check_drafting(config, state.input_ids, draft_tokens)
    processors = build_logits_processors(config, state.input_ids.shape[1])
    generator = sampling_generator(config, state.input_ids.device)
    stopping = build_stopping_criteria(config, tokenizer)
    eos = set(config.eos_token_ids)
    left = config.max_new_tokens
    allowance = draft_tokens  # drafts the next round may propose
    while left > 0:
        fresh = state.input_ids[:, state.processed :]
        if fresh.shape[1] == 0:
            raise GenerationError("nothing new to process: add tokens before generating")
        count = min(allowance, left - 1)  # the round adds up to count + 1 tokens
        drafts = []
        sampler = (
            DraftSampler(processors, generator) if config.do_sample and drafter.draws else None
        )
        if count and drafter.draws:  # an assistant model computes: not in the event loop
            drafts = await trio.to_thread.run_sync(drafter.propose, state.input_ids, count, sampler)
        elif count:
            drafts = drafter.propose(state.input_ids, count)
        count = len(drafts)
        state.drafted += count
        # the round's uniform draws come after the drafts' and before the model's own, all at
        # once, as transformers draws them (so a seed gives what its assisted sampling gives)
        uniforms = torch.rand(count, generator=generator).tolist() if sampler else []
        ids = torch.cat([state.input_ids, torch.tensor([drafts], dtype=torch.long)], dim=1)
        logits = await logits_after(head, pipeline, ids[:, state.processed :], count + 1)
        length = state.input_ids.shape[1]
        try:
            for offset in range(count + 1):  # the model's token after each draft it took
                prefix = ids[:, : length + offset]
                scores = processors(cast(torch.LongTensor, prefix), logits[:, offset, :])
                if sampler is None:  # greedy, or copied drafts: the model's own choice
                    token = int(choose_tokens(scores, config.do_sample, generator))
                elif offset < count:
                    token = keep_or_redraw(
                        scores[0], drafts[offset], sampler.drawn_from[offset], uniforms[offset],
                        generator,
                    )  # fmt: skip
                else:  # every draft taken: the model's own draw
                    token = int(choose_tokens(scores, True, generator))
                state.input_ids = torch.cat([prefix, torch.tensor([[token]])], dim=-1)
                state.processed = length + offset  # `token` is not in the caches yet
                state.drafts_taken += offset < count and token == drafts[offset]
                state.new_tokens.append(token)
                state.record(logits[0, offset], token)
                left -= 1
                yield token
                finished = stopping and bool(stopping(state.input_ids, scores).all())
                if token in eos or finished:
                    return
                if offset == count or token != drafts[offset]:
                    break
        finally:  # the caches drop what follows the tokens taken, ended early or not
            pipeline.truncate(state.processed)
        if not drafter.draws:  # copied drafts: as many as the last round earned
            allowance = min(draft_tokens, 2 * allowance) if offset == count else offset + 1
