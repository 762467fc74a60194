"""Speculative decoding through the swarm gives the model's own greedy tokens, in fewer trips,
and samples as the model alone samples.

An assistant that is the model itself has every draft taken (the fewest trips); one of other
random weights has nearly every draft rejected, so the peers drop drafts from their caches
at almost every step. The reference is transformers' greedy `generate()` without any
assistant; for sampling, the distribution that speculative sampling must reproduce."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from swarm.generation import GenerationError
from swarm.prompt_lookup import PromptLookup, lookup
from swarm.speculative import Drafter, keep_or_redraw
from tests.support.tiny_model import write_tiny_model

from .test_model import CHAINS, PROMPT, _swarm_and_model, generate_while_cutting_a_replica

NEW_TOKENS = 24


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speculative")
    return {
        "target": write_tiny_model(root / "target", "llama", seed=3),
        "other": write_tiny_model(root / "other", "llama", seed=4),
    }


def _local(checkpoint: Path, prompt: torch.Tensor, **options: Any) -> list[int]:
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False} | options
    output = model.generate(prompt, attention_mask=torch.ones_like(prompt), **options)
    return [int(t) for t in output[0, prompt.shape[1] :]]


def test_the_drafter_proposes_the_assistants_greedy_tokens_after_any_prefix(
    models: dict[str, Path],
) -> None:
    """Its cache is cut back to what each new sequence shares with it (drafts rejected, a
    new turn) and grown from there."""
    assistant = AutoModelForCausalLM.from_pretrained(models["other"])
    drafter = Drafter(assistant)
    ids = PROMPT
    for step, keep in enumerate([None, 9, 4, 12, 2]):
        if keep is not None:  # the sequence goes on from `keep` of its tokens, differently
            ids = torch.cat([ids[:, :keep], torch.tensor([[step + 70]])], dim=1)
        expected = _local(models["other"], ids, max_new_tokens=4)
        assert drafter.propose(ids, 4) == expected
        ids = torch.cat([ids, torch.tensor([expected])], dim=1)


@pytest.mark.parametrize("hops", [1, 2, 3])
@pytest.mark.parametrize("assistant", ["target", "other"])
def test_the_tokens_are_the_models_greedy_ones(
    models: dict[str, Path], hops: int, assistant: str
) -> None:
    expected = _local(models["target"], PROMPT)
    draft = AutoModelForCausalLM.from_pretrained(models[assistant])
    with (
        _swarm_and_model(models["target"], CHAINS[hops]) as (_, model),
        model.inference_session(max_length=64) as session,
    ):
        output = session.generate(
            PROMPT, max_new_tokens=NEW_TOKENS, assistant_model=draft, num_assistant_tokens=4,
            logprobs=1,
        )  # fmt: skip
        steps = len(session.timings[0][1])
        records = session.logprobs
    assert output[0, PROMPT.shape[1] :].tolist() == expected
    with torch.no_grad():  # each token's log probability is the model's, drafted or not
        logits = AutoModelForCausalLM.from_pretrained(models["target"])(output).logits[0]
    logprobs = torch.log_softmax(logits[PROMPT.shape[1] - 1 : -1], dim=-1)
    chosen = logprobs[torch.arange(NEW_TOKENS), expected]
    torch.testing.assert_close(
        torch.tensor([r.logprob for r in records]), chosen, atol=1e-4, rtol=0
    )
    assert [r.top[0][0] for r in records] == expected
    if assistant == "target":  # every draft taken: 5 tokens a trip
        assert steps == math.ceil(NEW_TOKENS / 5)
    else:
        assert steps > NEW_TOKENS / 2


@pytest.mark.parametrize(
    "options",
    [{"repetition_penalty": 1.3}, {"eos_token_id": 256}, {"max_new_tokens": 3}],
    ids=["penalty", "eos-mid-round", "fewer-tokens-than-drafts"],
)
def test_the_generation_arguments_apply_token_by_token(
    models: dict[str, Path], options: dict[str, Any]
) -> None:
    expected = _local(models["target"], PROMPT, **options)
    if "eos_token_id" in options:
        assert len(expected) < NEW_TOKENS  # 256 is a token the model makes early on
    draft = AutoModelForCausalLM.from_pretrained(models["target"])
    with _swarm_and_model(models["target"], CHAINS[2]) as (_, model):
        output = model.generate(
            PROMPT, **({"max_new_tokens": NEW_TOKENS} | options), assistant_model=draft
        )
    assert output[0, PROMPT.shape[1] :].tolist() == expected


def test_a_session_continues_after_drafts_were_dropped(models: dict[str, Path]) -> None:
    """A turn may end with rejected drafts in the peers' caches: the next turn's first step
    drops them."""
    second_turn = torch.tensor([[50, 51, 52]])
    draft = AutoModelForCausalLM.from_pretrained(models["other"])
    with (
        _swarm_and_model(models["target"], CHAINS[2]) as (_, model),
        model.inference_session(max_length=64) as session,
    ):
        first = session.generate(PROMPT, max_new_tokens=8, assistant_model=draft)
        second = session.generate(second_turn, max_new_tokens=8, assistant_model=draft)
        third = session.generate(torch.tensor([[60]]), max_new_tokens=4)  # no assistant
    whole = torch.cat([first, second_turn], dim=-1)
    assert second[0, 3:].tolist() == _local(models["target"], whole, max_new_tokens=8)
    whole = torch.cat([whole, second[:, 3:], torch.tensor([[60]])], dim=-1)
    assert third[0, 1:].tolist() == _local(models["target"], whole, max_new_tokens=4)


def test_learned_positions_go_back_with_the_dropped_drafts(tmp_path: Path) -> None:
    """GPT-2: the first peer numbers the tokens after a cut from the position kept."""
    target = write_tiny_model(tmp_path / "target", "gpt2", seed=3)
    other = write_tiny_model(tmp_path / "other", "gpt2", seed=4)
    draft = AutoModelForCausalLM.from_pretrained(other)
    with (
        _swarm_and_model(target, CHAINS[2]) as (_, model),
        model.inference_session(max_length=64) as session,
    ):
        output = session.generate(PROMPT, max_new_tokens=NEW_TOKENS, assistant_model=draft)
        steps = len(session.timings[0][1])
    assert output[0, PROMPT.shape[1] :].tolist() == _local(target, PROMPT)
    assert steps < NEW_TOKENS  # some drafts were taken, others dropped


def test_a_peer_cut_off_mid_speculation_changes_no_token(
    models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """The replica gets the history with the rejected drafts already dropped."""
    expected = _local(models["target"], PROMPT)
    draft = AutoModelForCausalLM.from_pretrained(models["other"])
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "assistant_model": draft}
    result, victim = generate_while_cutting_a_replica(models["target"], input_ids=PROMPT, **options)
    assert result[0][0, PROMPT.shape[1] :].tolist() == expected
    assert f"peer {victim.peer[:8]} failed" in caplog.text


def test_what_an_assistant_cannot_draft_for_is_a_clear_error(models: dict[str, Path]) -> None:
    draft = AutoModelForCausalLM.from_pretrained(models["other"])
    with _swarm_and_model(models["target"], CHAINS[1]) as (_, model):
        with pytest.raises(GenerationError, match="not beams"):
            model.generate(PROMPT, max_new_tokens=4, assistant_model=draft, num_beams=2)
        with pytest.raises(GenerationError, match="one sequence"):
            model.generate(PROMPT.repeat(2, 1), max_new_tokens=4, assistant_model=draft)
        with pytest.raises(GenerationError, match="drafts a round must be >= 1"):
            model.generate(PROMPT, max_new_tokens=4, assistant_model=draft, num_assistant_tokens=0)


def test_speculative_sampling_draws_from_the_models_distribution() -> None:
    """Drafts drawn from q, kept or redrawn against p: the tokens taken are distributed as p,
    though q favours other tokens (40,000 seeded draws, each share within 0.01 of p's)."""
    p_scores = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0, 1.5])
    q = torch.softmax(torch.tensor([0.0, 2.0, 2.0, 1.0, -1.0, 0.0]), dim=-1)
    generator = torch.Generator().manual_seed(0)
    draws = 40_000
    drafts = torch.multinomial(q, draws, replacement=True, generator=generator).tolist()
    uniforms = torch.rand(draws, generator=generator).tolist()
    taken = Counter(
        keep_or_redraw(p_scores, draft, q, uniform, generator)
        for draft, uniform in zip(drafts, uniforms, strict=True)
    )
    shares = torch.tensor([taken[token] / draws for token in range(6)])
    torch.testing.assert_close(shares, torch.softmax(p_scores, dim=-1), atol=0.01, rtol=0)
    assert Counter(drafts)[1] / draws > 0.3 > float(shares[1])  # q's favourite is not p's


def test_speculative_sampling_draws_what_transformers_assisted_sampling_draws(
    models: dict[str, Path],
) -> None:
    """A seed gives the tokens of transformers' own assisted sampling (4 drafts a round, no
    confidence cut): the same drafts, uniform draws and redraws, in the same order, through
    2 peers. At temperature 1: transformers applies a temperature twice to the assistant's
    distribution, which changes its redraws (both keep the model's distribution exactly)."""
    options = {"do_sample": True, "top_k": 0, "max_new_tokens": NEW_TOKENS}
    target = AutoModelForCausalLM.from_pretrained(models["target"])
    assistant = AutoModelForCausalLM.from_pretrained(models["other"])
    assistant.generation_config.update(
        num_assistant_tokens=4, num_assistant_tokens_schedule="constant",
        assistant_confidence_threshold=0.0,
    )  # fmt: skip
    expected = {}
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        output = target.generate(PROMPT, attention_mask=torch.ones_like(PROMPT),
                                 assistant_model=assistant, **options)  # fmt: skip
        expected[seed] = output[0, PROMPT.shape[1] :].tolist()
    with _swarm_and_model(models["target"], CHAINS[2]) as (_, model):
        got = {
            seed: model.generate(PROMPT, assistant_model=assistant, num_assistant_tokens=4,
                                 seed=seed, **options)[0, PROMPT.shape[1] :].tolist()
            for seed in (1, 2, 3)
        }  # fmt: skip
    assert got == expected


def test_sampling_with_drafts_keeps_the_models_choice(models: dict[str, Path]) -> None:
    """Sampling from the one likeliest token (top_k 1) must give the greedy tokens, whatever
    the assistant draws: its drafts are checked against the model's distribution."""
    expected = _local(models["target"], PROMPT)
    draft = AutoModelForCausalLM.from_pretrained(models["other"])
    options = {"do_sample": True, "top_k": 1, "seed": 7, "assistant_model": draft}
    with _swarm_and_model(models["target"], CHAINS[2]) as (_, model):
        output = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, **options)
    assert output[0, PROMPT.shape[1] :].tolist() == expected


def test_seeded_speculative_sampling_repeats_itself_and_takes_a_twins_drafts(
    models: dict[str, Path],
) -> None:
    """With the model as its own assistant, p equals q: every draft is taken (5 tokens a
    trip); a seed gives the same tokens again, another seed others."""
    draft = AutoModelForCausalLM.from_pretrained(models["target"])
    options = {"do_sample": True, "temperature": 1.5, "top_k": 0, "assistant_model": draft}
    runs = []
    with _swarm_and_model(models["target"], CHAINS[2]) as (_, model):
        for seed in (1, 1, 2):
            with model.inference_session(max_length=64) as session:
                output = session.generate(PROMPT, max_new_tokens=NEW_TOKENS, seed=seed, **options)
                runs.append((output[0, PROMPT.shape[1] :].tolist(), len(session.timings[0][1])))
    assert runs[0] == runs[1] and runs[0][0] != runs[2][0]
    assert all(trips == math.ceil(NEW_TOKENS / 5) for _, trips in runs)


@pytest.mark.parametrize(
    ("tokens", "prediction", "drafts"),
    [
        ([1, 2, 3, 9, 1, 2], (), [3, 9, 1]),  # the last 2 tokens came first at the start
        ([5, 1, 2], (7, 1, 2, 8, 9, 6), [8, 9, 6]),  # the prediction is looked up first
        ([1, 2, 8, 5, 1, 2], (1, 2), [8, 5, 1]),  # nothing follows there: the text then
        ([4, 6, 5, 7, 6], (), [5, 7, 6]),  # "7 6" came nowhere before: "6" did
        ([1, 2, 3], (), []),  # nothing came before
        ([1, 2], (), []),  # the tail itself is no earlier place
    ],
)
def test_prompt_lookup_copies_what_followed_the_last_tokens_before(
    tokens: list[int], prediction: tuple[int, ...], drafts: list[int]
) -> None:
    assert lookup(tokens, prediction, 3, 2) == drafts
    ids = torch.tensor([tokens])
    assert PromptLookup(2, prediction, begin=1).propose(ids, 3) == drafts
    # before the answer's first token, the prediction's beginning
    assert PromptLookup(2, prediction, begin=len(tokens)).propose(ids, 2) == (
        list(prediction[:2]) or drafts[:2]
    )


def _repeating_prompt() -> torch.Tensor:
    """A prompt that says the same thing twice, so that lookup finds what follows."""
    return torch.tensor([[1, *range(40, 52), *range(40, 46)]])


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_prompt_lookup_gives_the_tokens_of_decoding_without_drafts_in_fewer_trips(
    models: dict[str, Path], sampled: bool
) -> None:
    """Greedy: transformers' own prompt lookup and plain greedy decoding agree with ours.
    Sampled: a seed gives the tokens plain seeded sampling gives (each token one draw from
    the same generator), here and in transformers."""
    prompt = _repeating_prompt()
    options: dict[str, Any] = {"do_sample": True, "temperature": 0.02} if sampled else {}
    if sampled:
        torch.manual_seed(11)
    expected = _local(models["target"], prompt, **options)
    if not sampled:
        assert _local(models["target"], prompt, prompt_lookup_num_tokens=4) == expected
    with (
        _swarm_and_model(models["target"], CHAINS[2]) as (_, model),
        model.inference_session(max_length=64) as session,
    ):
        seed = {"seed": 11} if sampled else {}
        output = session.generate(prompt, max_new_tokens=NEW_TOKENS, prompt_lookup_num_tokens=4,
                                  **options, **seed)  # fmt: skip
        steps = len(session.timings[0][1])
    assert output[0, prompt.shape[1] :].tolist() == expected
    assert steps < NEW_TOKENS  # some drafts were taken


def test_a_right_prediction_has_every_draft_taken_and_a_wrong_one_changes_nothing(
    models: dict[str, Path],
) -> None:
    expected = _local(models["target"], PROMPT)
    wrong = [(token + 7) % 256 for token in expected]
    results = []
    with _swarm_and_model(models["target"], CHAINS[2]) as (_, model):
        for prediction in (expected, wrong):
            with model.inference_session(max_length=64) as session:
                output = session.generate(PROMPT, max_new_tokens=NEW_TOKENS,
                                          prediction_ids=prediction,
                                          prompt_lookup_num_tokens=5)  # fmt: skip
                trips = len(session.timings[0][1])
                results.append((output[0, PROMPT.shape[1] :].tolist(), trips, session.drafts))
    assert results[0] == (expected, math.ceil(NEW_TOKENS / 6), (20, 0))  # 6 tokens a trip
    assert results[1][0] == expected
    taken, rejected = results[1][2]
    assert rejected > 0 and taken + results[1][1] == NEW_TOKENS  # each trip: the drafts + 1


def test_copied_drafts_grow_fewer_where_they_miss(models: dict[str, Path]) -> None:
    """A prompt that holds every token of the vocabulary: lookup finds each last token in it
    and copies what followed, which the model seldom writes next. After a miss, a round
    proposes one draft more than the last took: about 2 positions a token at the first
    peer, where 5 drafts every round send about 4."""
    prompt = torch.tensor([[1, *range(2, 256)]])
    options = {"do_sample": True, "temperature": 1.0, "top_k": 0}
    torch.manual_seed(3)
    expected = _local(models["target"], prompt, **options)
    with _swarm_and_model(models["target"], CHAINS[2]) as (swarm, model):
        first = swarm.peers[0]
        output = model.generate(prompt, max_new_tokens=NEW_TOKENS, prompt_lookup_num_tokens=5,
                                seed=3, **options)  # fmt: skip
        positions = swarm.status(first).activity.tokens - prompt.shape[1]
    assert output[0, prompt.shape[1] :].tolist() == expected
    assert positions < 3 * NEW_TOKENS


def test_what_prompt_lookup_cannot_draft_for_is_a_clear_error(models: dict[str, Path]) -> None:
    draft = AutoModelForCausalLM.from_pretrained(models["other"])
    lookup_options = {"max_new_tokens": 4, "prompt_lookup_num_tokens": 3}
    with _swarm_and_model(models["target"], CHAINS[1]) as (_, model):
        with pytest.raises(GenerationError, match="not both"):
            model.generate(PROMPT, assistant_model=draft, **lookup_options)
        with pytest.raises(GenerationError, match="not beams"):
            model.generate(PROMPT, num_beams=2, **lookup_options)
        with pytest.raises(GenerationError, match="not draft in JSON mode"):
            model.generate(PROMPT, json_object=True, tokenizer=None, **lookup_options)
        with pytest.raises(GenerationError, match="max_matching_ngram_size must be >= 1"):
            model.generate(PROMPT, max_matching_ngram_size=0, **lookup_options)
        with pytest.raises(GenerationError, match="prediction_ids must be token ids"):
            model.generate(PROMPT, prediction_ids=["a"], **lookup_options)
