"""Tiny random-weight checkpoints of each supported family, and the transformers reference.

The reference for every comparison is the checkpoint loaded back by
`AutoModelForCausalLM.from_pretrained` (transformers' code, not ours): `output_hidden_states`
gives the input of every block, and running `model.model.layers[a:b]` with the model's own
rotary embedding and mask functions gives any block range, including the last one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.masking_utils import (
    create_causal_mask,
    create_chunked_causal_mask,
    create_sliding_window_causal_mask,
)

from peer.checkpoint import FAMILIES
from peer.span import cache_keyword
from tests.support.tiny_model import FAMILIES as TINY_FAMILIES
from tests.support.tiny_model import tiny_config

SMALL: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "max_position_embeddings": 256,
}

# their default padding (GPT-2's: BOS and EOS) token is past SMALL's vocab_size
EXTRA: dict[str, dict[str, Any]] = {
    **{f: {"pad_token_id": 0} for f in ("phi3", "smollm3", "glm4")},
    **{f: {"bos_token_id": 1, "eos_token_id": 1} for f in ("gpt2", "gpt_bigcode")},
}

MakeCheckpoint = Callable[..., Path]


def assert_rounding_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding, which grows with the values (Gemma 2's reach 16, Llama's
    0.1): for results computed in other shapes (one token at a time, merged steps)."""
    atol = max(1e-5, 5e-6 * float(expected.abs().max()))
    torch.testing.assert_close(got, expected, rtol=0, atol=atol)


def build_checkpoint(directory: Path, family: str, seed: int = 0, **overrides: Any) -> Path:
    shard = overrides.pop("max_shard_size", None)
    config = tiny_config(family, SMALL, **{**EXTRA.get(family, {}), **overrides})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # non-trivial norms and biases, so that loading them is checked
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.normal_(1.0, 0.1)
            elif name.endswith(".bias"):
                parameter.normal_(0.0, 0.1)
    kwargs = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(directory, **kwargs)
    return directory


@pytest.fixture
def torch_threads() -> Iterator[Callable[[int], None]]:
    """Sets torch's thread count for a test; the count is given back afterwards."""
    kept = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(kept)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One checkpoint per family, built once for the whole test session."""
    return {
        family: build_checkpoint(tmp_path_factory.mktemp(family), family)
        for family in TINY_FAMILIES
    }


@pytest.fixture
def make_checkpoint(tmp_path: Path) -> MakeCheckpoint:
    counter = iter(range(1000))

    def make(family: str = "llama", **overrides: Any) -> Path:
        return build_checkpoint(tmp_path / f"{family}-{next(counter)}", family, **overrides)

    return make


class Reference:
    """A transformers model loaded from the checkpoint, run block by block."""

    def __init__(self, path: Path, model: Any = None) -> None:
        """`model`: another one than the checkpoint's (one with an adapter merged)."""
        self.model = model or AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.model.eval()
        self.config = self.model.config
        self.family = FAMILIES[self.config.model_type]
        self.decoder: Any = self.family.decoder_of(self.model)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """What the client sends to block 0: the token embeddings (BLOOM norms them, OPT 350M
        projects them; GPT-2's block 0 adds learned positions to them)."""
        family = self.family
        with torch.no_grad():
            result: torch.Tensor = getattr(self.decoder, family.embeddings)(ids)
            for name in (family.input_projection, family.embedding_norm):
                if name and getattr(self.decoder, name, None) is not None:
                    result = getattr(self.decoder, name)(result)
        return result

    def positions(self, positions: torch.Tensor) -> torch.Tensor:
        """The learned position embeddings (GPT-2's, OPT's) of these positions."""
        table = getattr(self.decoder, str(self.family.learned_positions)).weight
        return torch.nn.functional.embedding(positions + self.family.position_offset, table)

    def blocks(self, hidden: torch.Tensor, start: int, end: int) -> torch.Tensor:
        """Blocks start..end-1 over a full sequence, as transformers' model forward runs them
        (from block 0: over the embeddings `embed` gives)."""
        positions = torch.arange(hidden.shape[1])[None, :]
        if start == 0 and self.family.learned_positions:
            hidden = hidden + self.positions(positions)
        mask_args = {
            "config": self.config,
            "inputs_embeds": hidden,
            "attention_mask": None,
            cache_keyword(create_causal_mask): None,
            "position_ids": positions,
        }
        if self.family.name == "falcon":  # its model always builds the mask
            mask_args["allow_is_causal_skip"] = False
        masks = {"full_attention": create_causal_mask(**mask_args)}
        if getattr(self.config, "sliding_window", None) is not None:
            masks["sliding_attention"] = create_sliding_window_causal_mask(**mask_args)
        if getattr(self.config, "attention_chunk_size", None) is not None:
            masks["chunked_attention"] = create_chunked_causal_mask(**mask_args)
        layer_types = getattr(self.config, "layer_types", None)
        with torch.no_grad():
            rotary = getattr(self.decoder, "rotary_emb", None)
            per_type = (
                rotary is not None and "layer_type" in inspect.signature(rotary.forward).parameters
            )  # Gemma 3
            kinds = set(layer_types) if per_type else {None}
            embeddings = (
                {k: rotary(hidden, positions, *([k] if k else [])) for k in kinds}
                if rotary is not None
                else {}
            )
            extra = {}
            if self.family.name == "bloom":
                alibi = self.family.load("build_alibi_tensor")
                extra["alibi"] = alibi(
                    torch.ones(hidden.shape[:2], dtype=torch.long), self.config.n_head, hidden.dtype
                )
            elif self.family.name == "falcon":
                extra["alibi"] = None
            for index in range(start, end):
                if layer_types is not None:
                    mask = masks[layer_types[index]]
                else:  # Mistral, Phi-3, StarCoder2, Mixtral: one window (or none) for all
                    mask = masks.get("sliding_attention", masks["full_attention"])
                output = getattr(self.decoder, self.family.blocks)[index](
                    hidden,
                    attention_mask=mask,
                    position_ids=positions,
                    position_embeddings=embeddings.get(layer_types[index] if per_type else None),
                    **extra,
                )
                hidden = output[0] if isinstance(output, tuple) else output
        return hidden


@pytest.fixture(scope="session")
def references(checkpoints: dict[str, Path]) -> dict[str, Reference]:
    return {family: Reference(path) for family, path in checkpoints.items()}
