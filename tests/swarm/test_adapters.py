"""LoRA adapters served by peers, chosen by the client: generation and scoring through the
peers that run the adapter equal the local model with the adapter merged into its weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from routing.path_selection import NoRouteError
from swarm import DistributedModelForCausalLM
from swarm.cli import build_parser, main
from swarm.commands.peer import peer_config
from swarm.generation import prompt_ids
from tests.support.lora import merged_model, write_lora
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model

PROMPT = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])


def _new_tokens(model: object, **kwargs: object) -> list[int]:
    output = model.generate(  # type: ignore[attr-defined]
        PROMPT, attention_mask=torch.ones_like(PROMPT), max_new_tokens=16, do_sample=False,
        **kwargs,
    )  # fmt: skip
    return [int(t) for t in output[0, PROMPT.shape[1] :]]


def test_a_client_generates_with_the_adapter_it_names(tmp_path: Path) -> None:
    """Two peers run the adapter over halves of the model, a third serves the whole model
    without it (one hop: the route a client would rather take): a client naming the adapter
    gets the merged model's tokens and logits, a client naming none the base model's."""
    checkpoint = write_tiny_model(tmp_path / "tiny", seed=3)
    adapter = write_lora(tmp_path / "tuned", checkpoint, seed=1)
    merged = merged_model(checkpoint, adapter)
    tuned, base = _new_tokens(merged), _new_tokens(AutoModelForCausalLM.from_pretrained(checkpoint))
    assert tuned != base
    with ThreadSwarm(
        checkpoint, [(0, 2), (2, 4), (0, 4)], per_peer=[{"adapters": (adapter,)}] * 2
    ) as swarm:
        with DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap], adapter="tuned"
        ) as model:
            assert _new_tokens(model) == tuned
            assert [swarm.info(peer)["adapters"] for peer in swarm.peers] == [["tuned"]] * 2 + [[]]
            ids = torch.randint(5, 200, (2, 9), generator=torch.Generator().manual_seed(0))
            with torch.no_grad():
                expected = merged(ids).logits
            torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=1e-4)
        with DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap]
        ) as plain:
            assert _new_tokens(plain) == base


def test_an_adapter_no_peer_runs_is_named_in_the_error(tmp_path: Path) -> None:
    checkpoint = write_tiny_model(tmp_path / "tiny", seed=3)
    with (
        ThreadSwarm(checkpoint, [(0, 4)]) as swarm,
        DistributedModelForCausalLM.from_pretrained(
            checkpoint, initial_peers=[swarm.bootstrap], adapter="missing"
        ) as model,
        pytest.raises(NoRouteError, match="with adapter 'missing'"),
    ):
        _new_tokens(model)


def test_the_commands_take_adapters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`swarm peer --adapter DIR` (repeatable, with `--quantize int8` too) and `swarm generate
    --adapter NAME`."""
    checkpoint = write_tiny_model(tmp_path / "tiny", seed=3)
    adapter, other = (write_lora(tmp_path / n, checkpoint, seed=1) for n in ("tuned", "other"))
    args = ["peer", str(checkpoint), "--adapter", str(adapter), "--adapter", str(other)]
    config = peer_config(build_parser().parse_args([*args, "--quantize", "int8"]))
    assert config.adapters == (adapter, other) and config.quantization == "int8"
    assert peer_config(build_parser().parse_args(args)).quantization is None
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    ids = prompt_ids(tokenizer, "Hello", chat=False)
    output = merged_model(checkpoint, adapter).generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False
    )
    expected = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
    with ThreadSwarm(checkpoint, [(0, 4)], adapters=(adapter,)) as swarm:
        status = main(["generate", str(checkpoint), "Hello", "--initial-peers", swarm.bootstrap,
                       "--max-new-tokens", "8", "--adapter", "tuned"])  # fmt: skip
    assert status == 0 and capsys.readouterr().out == expected + "\n"
