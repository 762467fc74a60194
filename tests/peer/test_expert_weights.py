"""Per-expert checkpoint tensors stacked as transformers 5 stacks them when it loads a model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peer.checkpoint import open_checkpoint, read_layer_tensors
from peer.errors import CheckpointError
from peer.expert_weights import stack_experts

from .conftest import Reference

STACKED = ["mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe"])
def test_stacked_like_transformers_loads_them(
    family: str, checkpoints: dict[str, Path], references: dict[str, Reference]
) -> None:
    """The checkpoint on disk has one tensor per expert; stacked, they equal the parameters
    of the model transformers loaded from it (its own conversion), block by block."""
    checkpoint = open_checkpoint(checkpoints[family])
    for layer in range(checkpoint.num_layers):
        stacked = read_layer_tensors(checkpoint, layer)
        assert any(".experts.0." in name for name in stacked)
        expected = references[family].model.model.layers[layer].state_dict()
        stack_experts(stacked, expected.keys())
        assert stacked.keys() == expected.keys()
        for name, tensor in expected.items():
            assert torch.equal(stacked[name], tensor), name


def _experts(
    count: int, names: tuple[str, str, str] = ("w1", "w3", "w2")
) -> dict[str, torch.Tensor]:
    tensors = {"block_sparse_moe.gate.weight": torch.randn(count, 4)}
    for index in range(count):
        for name, shape in zip(names, [(6, 4), (6, 4), (4, 6)], strict=True):
            tensors[f"block_sparse_moe.experts.{index}.{name}.weight"] = torch.randn(shape)
    return tensors


def test_mixtral_names_and_layout() -> None:
    tensors = _experts(3)
    stacked = dict(tensors)
    stack_experts(stacked, STACKED)
    assert sorted(stacked) == sorted(STACKED)
    gate_up = stacked["mlp.experts.gate_up_proj"]
    assert gate_up.shape == (3, 12, 4)  # each expert's gate rows, then its up rows
    assert torch.equal(gate_up[1, :6], tensors["block_sparse_moe.experts.1.w1.weight"])
    assert torch.equal(gate_up[1, 6:], tensors["block_sparse_moe.experts.1.w3.weight"])
    assert torch.equal(
        stacked["mlp.experts.down_proj"][2], tensors["block_sparse_moe.experts.2.w2.weight"]
    )
    assert torch.equal(stacked["mlp.gate.weight"], tensors["block_sparse_moe.gate.weight"])


def test_a_block_with_one_module_per_expert_takes_them_as_they_are() -> None:
    """transformers 4 keeps a module per expert: nothing is stacked or renamed."""
    tensors = _experts(2)
    unchanged = dict(tensors)
    stack_experts(tensors, list(tensors))
    assert tensors == unchanged


def test_a_missing_expert_or_projection_is_a_checkpoint_error() -> None:
    tensors = _experts(3)
    del tensors["block_sparse_moe.experts.1.w3.weight"]
    with pytest.raises(CheckpointError, match="w3 is missing for some experts"):
        stack_experts(tensors, STACKED)
    odd = _experts(2, ("w1", "w3", "w9"))
    with pytest.raises(CheckpointError, match="not gate/up/down"):
        stack_experts(odd, STACKED)
