"""The generation loop against the local transformers `generate()`, token for token.

The pipeline here is the whole local model run with its own KV cache (so the test isolates
the loop: logits processors, sampling, stopping, resumption), the head is the LM head.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, LlamaConfig

from peer.span import cache_keyword
from swarm.generation import GenerationError, GenerationState, check_attention_mask, generate_tokens
from swarm.sampling import PresenceFrequencyPenalty, SamplingConfig


class LocalPipeline:
    """All decoder blocks of a local model, with a cache, behind the pipeline interface."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cache = DynamicCache(config=model.config)
        self.calls: list[int] = []

    async def step(self, hidden_states: torch.Tensor) -> torch.Tensor:
        self.calls.append(hidden_states.shape[1])
        with torch.no_grad():
            cache = {cache_keyword(type(self.model.model).forward): self.cache}
            out = self.model.model(inputs_embeds=hidden_states, use_cache=True, **cache)
        return out.last_hidden_state


class LocalHead:
    def __init__(self, model: Any) -> None:
        self.model = model

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.model.embed_tokens(input_ids)

    def logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model.lm_head(hidden_states)


@pytest.fixture(scope="module")
def model() -> Any:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=3,
        pad_token_id=0,
    )
    return AutoModelForCausalLM.from_config(config).eval()


async def _generate(model: Any, input_ids: torch.Tensor, config: SamplingConfig) -> list[int]:
    state = GenerationState(input_ids=input_ids)
    pipeline = LocalPipeline(model)
    tokens = [t async for t in generate_tokens(LocalHead(model), pipeline, state, config)]
    assert pipeline.calls[0] == input_ids.shape[1]
    assert all(length == 1 for length in pipeline.calls[1:])
    return tokens


def _reference(model: Any, input_ids: torch.Tensor, seed: int | None, **kwargs: Any) -> list[int]:
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    return [int(t) for t in out[0, input_ids.shape[1] :]]


PROMPT = torch.tensor([[5, 17, 42, 9, 77, 31]])


async def test_greedy_equals_local_generate(model: Any) -> None:
    config = SamplingConfig(max_new_tokens=20, eos_token_ids=())
    ours = await _generate(model, PROMPT, config)
    assert ours == _reference(model, PROMPT, None, max_new_tokens=20, do_sample=False)
    assert len(ours) == 20


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0.7},
        {"temperature": 1.3, "top_k": 10},
        {"top_p": 0.8},
        {"repetition_penalty": 1.3, "top_k": 20, "top_p": 0.9, "temperature": 0.9},
    ],
)
async def test_seeded_sampling_equals_local_generate(model: Any, options: dict[str, Any]) -> None:
    config = SamplingConfig(max_new_tokens=24, do_sample=True, seed=1234, **options)
    ours = await _generate(model, PROMPT, config)
    reference = _reference(model, PROMPT, 1234, max_new_tokens=24, do_sample=True, **options)
    assert ours == reference
    other_seed = await _generate(model, PROMPT, SamplingConfig(**{**config.__dict__, "seed": 7}))
    assert other_seed != ours, "the seed must matter, or this test proves nothing"


async def test_stops_at_eos(model: Any) -> None:
    free = await _generate(model, PROMPT, SamplingConfig(max_new_tokens=20))
    stop_token = free[5]
    stopped = await _generate(
        model, PROMPT, SamplingConfig(max_new_tokens=20, eos_token_ids=(stop_token,))
    )
    assert stopped == free[: free.index(stop_token) + 1]


async def test_continuation_sends_only_new_tokens(model: Any) -> None:
    """A second turn in the same session reuses the cache and equals a fresh run."""
    head, pipeline = LocalHead(model), LocalPipeline(model)
    state = GenerationState(input_ids=PROMPT)
    config = SamplingConfig(max_new_tokens=5)
    first = [t async for t in generate_tokens(head, pipeline, state, config)]
    turn = torch.tensor([[11, 12]])
    state.input_ids = torch.cat([state.input_ids, turn], dim=-1)
    second = [t async for t in generate_tokens(head, pipeline, state, config)]
    # the unprocessed last token of turn one plus the two new ones, then one at a time
    assert pipeline.calls[5] == 3
    history = torch.cat([PROMPT, torch.tensor([first]), turn], dim=-1)
    assert second == _reference(model, history, None, max_new_tokens=5, do_sample=False)


def test_the_presence_and_frequency_penalties_count_the_generated_tokens_only() -> None:
    """After a prompt of 3 tokens, 5 came twice and 7 once: 5 loses 0.5 + 2 x 0.25, 7 loses
    0.5 + 0.25, and the prompt's tokens (1, 2, 3) nothing."""
    penalty = PresenceFrequencyPenalty(prompt_length=3, presence=0.5, frequency=0.25)
    scores = penalty(torch.tensor([[1, 2, 3, 5, 7, 5]]), torch.zeros(1, 8))
    assert scores[0].tolist() == [0, 0, 0, 0, 0, -1.0, 0, -0.75]


def test_bad_arguments_are_typed_errors() -> None:
    with pytest.raises(GenerationError):
        SamplingConfig(do_sample=True, temperature=0)
    with pytest.raises(GenerationError):
        SamplingConfig(top_p=1.5)
    with pytest.raises(GenerationError):
        SamplingConfig(max_new_tokens=-1)


def test_transformers_arguments_we_do_not_use_are_named_or_ignored() -> None:
    from transformers import GenerationConfig

    with pytest.raises(GenerationError, match="guidance_scale"):
        SamplingConfig.from_generation_config(GenerationConfig(), guidance_scale=1.5)
    config = SamplingConfig.from_generation_config(GenerationConfig(), pad_token_id=0)
    assert config == SamplingConfig.from_generation_config(GenerationConfig())
    ids = torch.tensor([[5, 6, 7]])
    check_attention_mask(None, ids)
    check_attention_mask(torch.ones_like(ids), ids)
    for bad in (torch.tensor([[0, 1, 1]]), torch.ones(1, 2)):  # padding, or another length
        with pytest.raises(GenerationError, match="attention_mask"):
            check_attention_mask(bad, ids)


def test_steering_defaults_follow_the_generation_config_in_our_shapes() -> None:
    from transformers import GenerationConfig

    generation_config = GenerationConfig(
        sequence_bias=[[[4, 5], -2]], bad_words_ids=[[3], [6, 7]], suppress_tokens=[9],
        begin_suppress_tokens=torch.tensor([8]), typical_p=0.5, max_time=3.0,
    )  # fmt: skip
    config = SamplingConfig.from_generation_config(generation_config)
    assert config.sequence_bias == (((4, 5), -2.0),)
    assert config.bad_words_ids == ((3,), (6, 7))
    assert (config.suppress_tokens, config.begin_suppress_tokens) == ((9,), (8,))
    assert (config.typical_p, config.max_time) == (0.5, 3.0)
    overridden = SamplingConfig.from_generation_config(generation_config, sequence_bias={(1,): 2})
    assert overridden.sequence_bias == (((1,), 2.0),)


def test_defaults_follow_the_generation_config() -> None:
    from transformers import GenerationConfig

    config = SamplingConfig.from_generation_config(
        GenerationConfig(do_sample=True, temperature=0.6, eos_token_id=[2, 7]), max_new_tokens=9
    )
    assert (config.do_sample, config.temperature, config.top_k) == (True, 0.6, 50)
    assert config.eos_token_ids == (2, 7) and config.max_new_tokens == 9
