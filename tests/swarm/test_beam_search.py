"""Beam search through the swarm equals transformers' `generate(num_beams=...)`: the peers
reorder their caches' rows between steps (relayed along the chain too), and a peer lost
mid-search is rebuilt from the history in the beams' current order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from swarm.generation import GenerationError
from tests.support.tiny_model import write_tiny_model

from .test_model import (
    CHAINS,
    PROMPT,
    TEXTS,
    _swarm_and_model,
    _until,
    generate_while_cutting_a_replica,
)

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("beams") / "tiny-beams", "llama", seed=3)


def _local(checkpoint: Path, inputs: dict[str, torch.Tensor], **options: Any) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    options = {"do_sample": False} | options
    seed = options.pop("seed", None)
    if seed is not None:
        torch.manual_seed(seed)
    return model.generate(**inputs, max_new_tokens=NEW_TOKENS, **options)


def _prompt() -> dict[str, torch.Tensor]:
    return {"input_ids": PROMPT, "attention_mask": torch.ones_like(PROMPT)}


@pytest.mark.parametrize("hops", [1, 2, 3])
def test_beam_search_equals_transformers(tiny: Path, hops: int) -> None:
    expected = _local(tiny, _prompt(), num_beams=4)
    with _swarm_and_model(tiny, CHAINS[hops]) as (swarm, model):
        output = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=4)
        assert torch.equal(output, expected)
        assert all(_until(lambda p=p: swarm.sessions(p) == 0) for p in swarm.peers)


@pytest.mark.parametrize(
    "options",
    [
        {"num_beams": 3, "num_return_sequences": 3, "length_penalty": 0.5},
        {"num_beams": 2, "early_stopping": "never", "repetition_penalty": 1.3},
        {"num_beams": 3, "num_return_sequences": 2, "do_sample": True, "temperature": 0.8,
         "top_k": 20, "top_p": 0.9, "seed": 5},
    ],
    ids=["three-returned", "never-stop-early", "sampling"],
)  # fmt: skip
def test_beam_search_arguments_mean_what_they_mean_in_transformers(
    tiny: Path, options: dict[str, Any]
) -> None:
    expected = _local(tiny, _prompt(), **options)
    with _swarm_and_model(tiny, CHAINS[2]) as (_, model):
        output = model.generate(
            PROMPT, max_new_tokens=NEW_TOKENS, **({"do_sample": False} | options)
        )
    assert torch.equal(output, expected)


@pytest.mark.parametrize(
    ("early_stopping", "length_penalty"), [(True, 1.0), (False, 1.0), ("never", -1.0)]
)
def test_beams_that_reach_eos_end_the_search_as_in_transformers(
    tiny: Path, early_stopping: bool | str, length_penalty: float
) -> None:
    options = {"num_beams": 4, "num_return_sequences": 4, "eos_token_id": 164, "pad_token_id": 0,
               "early_stopping": early_stopping, "length_penalty": length_penalty}  # fmt: skip
    expected = _local(tiny, _prompt(), **options)
    assert expected.shape[1] < PROMPT.shape[1] + NEW_TOKENS  # 164: a token the beams make
    with _swarm_and_model(tiny, CHAINS[2]) as (_, model):
        output = model.generate(PROMPT, max_new_tokens=NEW_TOKENS, do_sample=False, **options)
    assert torch.equal(output, expected)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_batch_of_prompts_searches_its_beams_within_each_prompt(
    tiny: Path, family: str, tmp_path: Path
) -> None:
    """Left-padded prompts: each prompt's beams share its padding, so its rows reorder among
    themselves (GPT-2: and keep their positions, which the first peer adds)."""
    if family != "llama":
        tiny = write_tiny_model(tmp_path / family, family, seed=3)
    tokenizer = AutoTokenizer.from_pretrained(tiny, padding_side="left")
    batch = dict(tokenizer(TEXTS, padding=True, return_tensors="pt"))
    options = {"num_beams": 3, "num_return_sequences": 2}
    expected = _local(tiny, batch, **options)
    with _swarm_and_model(tiny, CHAINS[2]) as (_, model):
        output = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False, **options)
    assert torch.equal(output, expected)


def test_beam_search_goes_on_through_a_replica_when_its_peer_is_cut_off(
    tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica gets the beams' history in their order of the moment: the same output."""
    expected = _local(tiny, _prompt(), num_beams=4)
    options = {"max_new_tokens": NEW_TOKENS, "do_sample": False, "num_beams": 4}
    result, victim = generate_while_cutting_a_replica(tiny, input_ids=PROMPT, **options)
    assert torch.equal(result[0], expected)
    assert f"peer {victim.peer[:8]} failed" in caplog.text


def test_what_beam_search_does_not_take_is_a_clear_error(tiny: Path) -> None:
    with _swarm_and_model(tiny, CHAINS[1]) as (_, model):
        for options, match in [
            ({"streamer": print}, "streamer"),
            ({"num_return_sequences": 5}, "num_return_sequences"),
            ({"early_stopping": "sometimes"}, "early_stopping"),
        ]:
            with pytest.raises(GenerationError, match=match):
                model.generate(PROMPT, max_new_tokens=2, **({"num_beams": 4} | options))
        with (
            model.inference_session(max_length=32) as session,
            pytest.raises(GenerationError, match="not in a session"),
        ):
            session.generate(PROMPT, max_new_tokens=2, num_beams=2)
