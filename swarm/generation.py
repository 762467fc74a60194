"""The client's generation loop: tokens in, hidden states through the swarm, tokens out.

It is our own async loop over the logits processors and stopping criteria that
`swarm.sampling` builds from `generate()`'s arguments, in transformers' order, so that
greedy and seeded sampling give the same tokens as the local model's `generate()`.

The loop knows nothing of the network: it talks to a `HiddenStatePipeline` (one inference
session through a chain of peers, or local layers in tests) and to a `LanguageModelHead`
(the embeddings, final norm and LM head the client holds).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch

from .errors import GenerationError as GenerationError
from .json_mode import JsonConstraint
from .sampling import (
    SamplingConfig,
    build_logits_rules,
    build_logits_warpers,
    build_stopping_criteria,
    choose_tokens,
    sampling_generator,
    time_limit,
)


class HiddenStatePipeline(Protocol):
    """Hidden states of new positions in, hidden states after the last block out."""

    async def step(self, hidden_states: torch.Tensor) -> torch.Tensor: ...


class LanguageModelHead(Protocol):
    """What the client computes locally: token embeddings and the logits of the last position."""

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor: ...

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor: ...


def left_padding(attention_mask: Any, input_ids: torch.Tensor) -> list[int]:
    """How many padding tokens precede each row's prompt, from transformers' `attention_mask`
    (as `**tokenizer(texts, padding=True, return_tensors="pt")` passes it). Prompts of a
    decoder-only model are padded on the left; any other mask is an error."""
    if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise GenerationError(f"input_ids must be [batch, length], not {list(input_ids.shape)}")
    if attention_mask is None:
        return [0] * input_ids.shape[0]
    mask = torch.as_tensor(attention_mask).bool()
    if mask.shape != input_ids.shape:
        raise GenerationError(
            f"attention_mask is {list(mask.shape)}, input_ids {list(input_ids.shape)}"
        )
    padding = []
    for row in mask:
        pads = int((~row).sum())
        if pads == len(row) or not bool(row[pads:].all()):
            raise GenerationError(
                "attention_mask must pad on the left and leave every row a token "
                "(tokenizer.padding_side = 'left')"
            )
        padding.append(pads)
    return padding


def check_attention_mask(attention_mask: Any, input_ids: torch.Tensor) -> None:
    """Accept transformers' `attention_mask` where it must mask nothing (a session's turn:
    one sequence, which continues)."""
    if attention_mask is None:
        return
    mask = torch.as_tensor(attention_mask)
    if mask.shape != input_ids.shape or not bool(mask.all()):
        raise GenerationError("attention_mask must be all ones: no padding here")


def common_prefix(first: torch.Tensor, second: torch.Tensor) -> int:
    """How many leading token ids two `[1, length]` sequences share."""
    length = min(first.shape[1], second.shape[1])
    differ = (first[0, :length] != second[0, :length]).nonzero()
    return int(differ[0]) if len(differ) else length


@dataclass(frozen=True)
class TokenLogprob:
    """The model's log-probability of a token where it stands, and the likeliest tokens
    there (best first), from its own distribution: before any logits processor."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprobs(logits: torch.Tensor, tokens: Sequence[int], top: int) -> list[TokenLogprob]:
    """Per row of `logits` (`[positions, vocabulary]`), the record of `tokens` at that row."""
    logprobs = torch.log_softmax(logits.to(torch.float32), dim=-1)
    values, ids = logprobs.topk(top, dim=-1)
    return [
        TokenLogprob(
            token,
            float(logprobs[row, token]),
            tuple(zip(ids[row].tolist(), values[row].tolist(), strict=True)),
        )
        for row, token in enumerate(tokens)
    ]


@dataclass
class GenerationState:
    """Token ids so far, and how much of them the pipeline has already seen. With
    `logprobs` set to a list, each new token's `TokenLogprob` joins it, with the
    `top_logprobs` likeliest tokens. Speculative decoding counts its drafts."""

    input_ids: torch.Tensor
    processed: int = 0
    new_tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    top_logprobs: int = 0
    drafted: int = 0  # drafts sent to the model to check
    drafts_taken: int = 0  # of them, those it took

    def record(self, logits: torch.Tensor, token: int) -> None:
        """`token` was chosen from `logits` (`[vocabulary]`, before the processors)."""
        if self.logprobs is not None:
            self.logprobs.extend(token_logprobs(logits[None], [token], self.top_logprobs))


async def logits_after(
    head: LanguageModelHead, pipeline: HiddenStatePipeline, fresh: torch.Tensor, last: int = 1
) -> torch.Tensor:
    """`fresh` token ids through the pipeline: the float32 logits of their `last` positions,
    `[rows, last, vocabulary]`."""
    hidden = await pipeline.step(head.embed(fresh))
    return head.logits(hidden[:, -last:, :]).to(torch.float32)


async def generate_tokens(
    head: LanguageModelHead,
    pipeline: HiddenStatePipeline,
    state: GenerationState,
    config: SamplingConfig,
    tokenizer: Any = None,
) -> AsyncGenerator[int, None]:
    """Yield new token ids one at a time, extending `state` as it goes.

    Only positions the pipeline has not seen are sent, so a session that continues a
    conversation sends just the new turn. Batch size is one. In JSON mode, a scan of the
    vocabulary that runs past `max_time` ends the generation there, without a token.
    """
    if state.input_ids.dim() != 2 or state.input_ids.shape[0] != 1:
        raise GenerationError("generation takes input_ids of shape (1, length)")
    rules = build_logits_rules(config, state.input_ids.shape[1])
    warpers = build_logits_warpers(config)
    stopping = build_stopping_criteria(config, tokenizer)
    deadline = time_limit(stopping)
    generator = sampling_generator(config, state.input_ids.device)
    eos = set(config.eos_token_ids)
    json = next(iter(json_constraints(config, tokenizer, rows=1)), None)
    draw = drawer(config, generator)
    for _ in range(config.max_new_tokens):
        fresh = state.input_ids[:, state.processed :]
        if fresh.shape[1] == 0:
            raise GenerationError("nothing new to process: add tokens before generating")
        hidden = await pipeline.step(head.embed(fresh))
        state.processed = state.input_ids.shape[1]  # in the caches, whatever happens next
        logits = head.logits(hidden[:, -1:, :])[:, -1, :].to(torch.float32)
        ids = cast(torch.LongTensor, state.input_ids)
        ruled = rules(ids, logits)
        scores = warpers(ids, ruled)  # rules then warpers: transformers' processors, in order
        token = draw(scores) if json is None else json.choose(scores, ruled, draw, deadline)
        if token is None:  # out of time within JSON mode's scan: as max_time ends it
            return
        if json is not None:
            json.take(token)
        chosen = torch.tensor([[token]], dtype=state.input_ids.dtype, device=state.input_ids.device)
        state.input_ids = torch.cat([state.input_ids, chosen], dim=-1)
        state.new_tokens.append(token)
        state.record(logits[0], token)
        yield token
        ended = token in eos or (json is not None and json.complete)
        if ended or (stopping and bool(stopping(state.input_ids, scores).all())):
            return


async def generate_batch(
    head: LanguageModelHead,
    pipeline: HiddenStatePipeline,
    input_ids: torch.Tensor,
    config: SamplingConfig,
    *,
    padding: Sequence[int] = (),
    pad_token_id: int | None = None,
    tokenizer: Any = None,
) -> torch.Tensor:
    """What transformers' `generate()` returns for a batch of left-padded prompts (`padding`:
    each row's count): the prompts, then the new tokens, a finished row padded with
    `pad_token_id` (the first EOS if not given). The pipeline's sessions know each row's
    padding too; every step sends all rows at once, a finished one too, as transformers
    computes it. The rows share the logits processors, stopping criteria and random
    generator, as there, so seeded sampling draws alike. In JSON mode each row keeps to its
    own constraint, drawn row by row, and ends where its value closes; a scan of the
    vocabulary that runs past `max_time` ends the generation before that step's tokens."""
    rules = build_logits_rules(config, input_ids.shape[1], padding)
    warpers = build_logits_warpers(config)
    stopping = build_stopping_criteria(config, tokenizer)
    deadline = time_limit(stopping)
    generator = sampling_generator(config, input_ids.device)
    eos = torch.tensor(config.eos_token_ids, dtype=torch.long)
    if pad_token_id is None and len(eos):
        pad_token_id = int(eos[0])
    rows = input_ids.shape[0]
    json = json_constraints(config, tokenizer, rows)
    if json and pad_token_id is None:
        raise GenerationError("JSON mode in a batch pads finished rows: it needs an EOS token")
    draw = drawer(config, generator)  # row by row, in JSON mode
    unfinished = torch.ones(rows, dtype=torch.bool)
    fresh = input_ids
    for _ in range(config.max_new_tokens):
        logits = (await logits_after(head, pipeline, fresh))[:, -1, :]
        ids = cast(torch.LongTensor, input_ids)
        ruled = rules(ids, logits)
        scores = warpers(ids, ruled)  # rules then warpers: transformers' processors, in order
        if json:
            chosen = _json_tokens(json, scores, ruled, unfinished, draw, deadline)
            if chosen is None:  # out of time within JSON mode's scan: as max_time ends it
                break
            tokens = chosen
        else:
            tokens = choose_tokens(scores, config.do_sample, generator)
        if len(eos) and pad_token_id is not None:  # without EOS, transformers pads nothing
            tokens = torch.where(unfinished, tokens, pad_token_id)
        fresh = tokens[:, None].to(input_ids.dtype)
        input_ids = torch.cat([input_ids, fresh], dim=-1)
        done = torch.isin(tokens, eos)
        if json:
            done |= torch.tensor([constraint.complete for constraint in json])
        if stopping:
            done |= stopping(input_ids, scores)
        unfinished &= ~done
        if not unfinished.any():
            break
    return input_ids


def json_constraints(config: SamplingConfig, tokenizer: Any, rows: int) -> list[JsonConstraint]:
    """JSON mode's constraint for each of `rows` sequences (none if `config` is free text)."""
    schema = config.json_mode
    if schema is None:
        return []
    return [
        JsonConstraint(tokenizer, config.eos_token_ids, schema, config.json_whitespace)
        for _ in range(rows)
    ]


def drawer(config: SamplingConfig, generator: torch.Generator) -> Callable[[torch.Tensor], int]:
    """One row's choice from its processed scores, as `choose_tokens` makes it."""

    def draw(scores: torch.Tensor) -> int:
        return int(choose_tokens(scores, config.do_sample, generator))

    return draw


def _json_tokens(
    json: list[JsonConstraint],
    scores: torch.Tensor,
    ruled: torch.Tensor,
    unfinished: torch.Tensor,
    draw: Callable[[torch.Tensor], int],
    deadline: float | None = None,
) -> torch.Tensor | None:
    """Each unfinished row's token as JSON mode chooses it, drawn row by row (a finished
    row's is padding, later); None if a row's scan ran past `deadline`."""
    tokens = torch.zeros(len(json), dtype=torch.long)
    for row, constraint in enumerate(json):
        if unfinished[row]:
            span = slice(row, row + 1)
            token = constraint.choose(scores[span], ruled[span], draw, deadline)
            if token is None:
                return None
            constraint.take(token)
            tokens[row] = token
    return tokens


def prompt_ids(tokenizer: Any, prompt: str, *, chat: bool) -> torch.Tensor:
    """Token ids of a prompt, through the chat template when `chat` is set."""
    if chat:
        messages: Sequence[dict[str, str]] = [{"role": "user", "content": prompt}]
        encoded = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        return torch.as_tensor(encoded["input_ids"])
    return torch.as_tensor(tokenizer(prompt, return_tensors="pt")["input_ids"])
