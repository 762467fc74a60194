"""Beam search through the swarm: the `num_beams` continuations with the best total
log-probability, as transformers' `generate(num_beams=...)` keeps them.

Each prompt gets `num_beams` rows in the pipeline's sessions. At every step each batch item
weighs `2 * num_beams` (more with several EOS tokens) best continuations of all its beams:
those that hit a stopping criterion (EOS, a stop string, the last allowed token) join its
finished hypotheses, scored by total log-probability over `generated ** length_penalty`; the
best `num_beams` others run on. Before the next step the pipeline reorders its rows (each
peer its cache) so that row i holds the beam that continuation i came from. A batch item is
done when no running beam can beat its worst finished one (`early_stopping`: False, True or
"never", with transformers' meaning), and generation ends when every item is done. With
`do_sample`, the continuations weighed are drawn by probability (beam sampling), from the
seeded generator of `swarm.generation`.

`BeamState` is the pure core (tensors in, tensors out); `generate_beams` drives it over a
`ReorderablePipeline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch
from transformers import (
    EosTokenCriteria,
    LogitsProcessorList,
    MaxLengthCriteria,
    StoppingCriteriaList,
)

from .generation import GenerationError, HiddenStatePipeline, LanguageModelHead, logits_after
from .sampling import (
    SamplingConfig,
    build_logits_processors,
    build_stopping_criteria,
    sampling_generator,
)

__all__ = ["BeamState", "ReorderablePipeline", "generate_beams"]

EXCLUDED = -1.0e9  # the score that keeps a candidate out, as transformers adds it


class ReorderablePipeline(HiddenStatePipeline, Protocol):
    """A pipeline whose rows can take a new order before the next step."""

    def reorder(self, order: list[int]) -> None: ...


class BeamState:
    """The running beams and the finished hypotheses of every batch item.

    Shapes: `[items, beams, max_length]` for sequences, `[items, beams]` for scores."""

    def __init__(self, input_ids: torch.Tensor, config: SamplingConfig, fill: int) -> None:
        """`input_ids`: the prompts, `[items, length]`; `fill`: what follows a sequence
        shorter than the longest."""
        items, self.prompt_length = input_ids.shape
        k = config.num_beams
        self.config = config
        self.max_length = self.prompt_length + config.max_new_tokens
        # so that k beams go on even if k candidates just finished
        self.candidates = max(2, 1 + len(config.eos_token_ids)) * k
        self.running = input_ids.new_full((items, k, self.max_length), fill)
        self.running[:, :, : self.prompt_length] = input_ids[:, None, :]
        self.running_scores = torch.zeros(items, k)
        self.running_scores[:, 1:] = EXCLUDED  # the beams start equal: draw from the first
        self.finished = self.running.clone()
        self.finished_scores = torch.full((items, k), EXCLUDED)
        self.finished_lengths = torch.zeros(items, k, dtype=torch.long)
        self.is_finished = torch.zeros(items, k, dtype=torch.bool)
        self.improvable = torch.ones(items, 1, dtype=torch.bool)
        self.length = self.prompt_length  # of the running sequences
        self.done = False  # no item can improve any more

    @property
    def rows(self) -> torch.Tensor:
        """The running sequences, one row per beam: `[items * beams, length]`."""
        return self.running[:, :, : self.length].flatten(0, 1)

    def advance(
        self,
        log_probs: torch.Tensor,
        stopping: StoppingCriteriaList,
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Take the next token's log-probabilities (`[items * beams, vocabulary]`, processed);
        return each new row's source row, for the pipeline's reorder. With `generator`, the
        candidates are drawn by their probability instead of taken best first (beam
        sampling)."""
        items, k = self.running_scores.shape
        vocabulary = log_probs.shape[-1]
        totals = (log_probs.view(items, k, vocabulary) + self.running_scores[..., None]).view(
            items, k * vocabulary
        )
        if generator is None:
            scores, flat = torch.topk(totals, self.candidates)
        else:
            probabilities = torch.softmax(totals, dim=-1)
            drawn = torch.multinomial(probabilities, self.candidates, generator=generator)
            scores, order = totals.gather(1, drawn).sort(dim=-1, descending=True)
            flat = drawn.gather(1, order)
        source = flat // vocabulary
        sequences = _gather(self.running, source)
        sequences[:, :, self.length] = flat % vocabulary
        grown = sequences[:, :, : self.length + 1].flatten(0, 1)
        done = stopping(cast(torch.LongTensor, grown), log_probs).view(items, self.candidates)
        self._finish(sequences, scores, done)
        going = scores + done.float() * EXCLUDED
        best = torch.topk(going, k).indices
        self.running = _gather(sequences, best)
        self.running_scores = _gather(going, best)
        source = _gather(source, best)
        self.length += 1
        self._update_improvable()
        self.done = (
            not bool(self.improvable.any())
            or bool(done.all())
            or (self.config.early_stopping is True and bool(self.is_finished.all()))
        )
        offsets = torch.arange(items)[:, None] * k
        return (source + offsets).flatten().tolist()

    def _finish(self, sequences: torch.Tensor, scores: torch.Tensor, done: torch.Tensor) -> None:
        """Candidates among the first `num_beams` that just finished join the finished
        hypotheses if they score among the best `num_beams`."""
        k = self.config.num_beams
        generated = self.length + 1 - self.prompt_length
        just = done.clone()
        just[:, k:] = False
        ranked = scores / generated**self.config.length_penalty
        full = self.is_finished.all(dim=-1, keepdim=True) & (self.config.early_stopping is True)
        for excluded in (full, ~self.improvable, ~just):  # each adds, as in transformers
            ranked = ranked + excluded.float() * EXCLUDED
        merged_scores = torch.cat([self.finished_scores, ranked], dim=1)
        best = torch.topk(merged_scores, k).indices
        self.finished = _gather(torch.cat([self.finished, sequences], dim=1), best)
        self.finished_scores = _gather(merged_scores, best)
        lengths = torch.full_like(scores, generated, dtype=torch.long)
        self.finished_lengths = _gather(torch.cat([self.finished_lengths, lengths], dim=1), best)
        self.is_finished = _gather(torch.cat([self.is_finished, just], dim=1), best)

    def _update_improvable(self) -> None:
        """Whether a running beam may still beat the worst finished hypothesis."""
        penalty = self.config.length_penalty
        if self.config.early_stopping == "never" and penalty > 0:
            best_length = self.max_length - self.prompt_length
        else:
            best_length = self.length - self.prompt_length
        best_running = self.running_scores[:, :1] / best_length**penalty
        worst_finished = torch.where(
            self.is_finished, self.finished_scores.min(dim=1, keepdim=True).values, EXCLUDED
        )
        self.improvable &= (best_running > worst_finished).any(dim=-1, keepdim=True)

    def best(self) -> torch.Tensor:
        """The `num_return_sequences` best hypotheses of each item, `[items * n, length]`,
        cut after the longest of them."""
        n = self.config.num_return_sequences
        lengths = self.finished_lengths[:, :n]
        end = self.prompt_length + int(lengths.max())
        return self.finished[:, :n, :end].flatten(0, 1)


async def generate_beams(
    head: LanguageModelHead,
    pipeline: ReorderablePipeline,
    input_ids: torch.Tensor,
    config: SamplingConfig,
    *,
    padding: Sequence[int] = (),
    pad_token_id: int | None = None,
    tokenizer: Any = None,
) -> torch.Tensor:
    """What transformers' `generate(num_beams=...)` returns for left-padded prompts
    (`padding`: each prompt's count): the best `num_return_sequences` per prompt, the
    prompt then its tokens, shorter ones filled with `pad_token_id` (else the first EOS).
    `pipeline` has `num_beams` rows per prompt, each prompt's next to each other."""
    if config.max_new_tokens < 1:
        raise GenerationError("beam search takes max_new_tokens >= 1")
    eos = config.eos_token_ids
    state = BeamState(input_ids, config, fill=(pad_token_id or eos[0]) if eos else -1)
    rows = [pad for pad in padding for _ in range(config.num_beams)]
    processors: LogitsProcessorList = build_logits_processors(config, input_ids.shape[1], rows)
    stopping = _stopping_criteria(config, tokenizer, state.max_length)
    generator = sampling_generator(config, input_ids.device) if config.do_sample else None
    fresh = state.rows
    while True:
        logits = (await logits_after(head, pipeline, fresh))[:, -1, :]
        log_probs = processors(
            cast(torch.LongTensor, state.rows), torch.log_softmax(logits, dim=-1)
        )
        order = state.advance(log_probs, stopping, generator)
        if state.done:
            return state.best()
        pipeline.reorder(order)
        fresh = state.rows[:, -1:]


def _stopping_criteria(
    config: SamplingConfig, tokenizer: Any, max_length: int
) -> StoppingCriteriaList:
    """`generate()`'s criteria for beams: the stop strings, the maximum length, and EOS."""
    criteria = build_stopping_criteria(config, tokenizer)
    criteria.append(MaxLengthCriteria(max_length))
    if config.eos_token_ids:
        criteria.append(EosTokenCriteria(list(config.eos_token_ids)))
    return criteria


def _gather(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """`tensor[i, indices[i, j], ...]`: the beams `indices` names, per item."""
    while indices.dim() < tensor.dim():
        indices = indices.unsqueeze(-1)
    return torch.take_along_dim(tensor, indices, dim=1)
