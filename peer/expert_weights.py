"""Mixture-of-experts weights: one tensor per expert on disk, stacked tensors in transformers 5.

MoE checkpoints (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) store every expert's projections
apart, as they were published: `mlp.experts.3.gate_proj.weight`, or Mixtral's
`block_sparse_moe.experts.3.w1.weight`. transformers 5 runs a block's experts from two stacked
tensors, `mlp.experts.gate_up_proj` (experts x 2*intermediate x hidden: each expert's gate rows,
then its up rows) and `mlp.experts.down_proj` (experts x hidden x intermediate), and converts
when it loads a whole model. A peer loads one block at a time, so `stack_experts` does that
conversion for one block, and only when the block expects stacked tensors (transformers 4
keeps one module per expert), so the same checkpoint serves under either version.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import torch

from .errors import CheckpointError

__all__ = ["stack_experts"]

_EXPERT = re.compile(r"^(?P<experts>.*\bexperts)\.(?P<index>\d+)\.(?P<projection>\w+)\.weight$")
_GATE_UP_DOWN = (("gate_proj", "up_proj", "down_proj"), ("w1", "w3", "w2"))  # Mixtral: w1..w3
_MIXTRAL_MODULE = "block_sparse_moe."


def stack_experts(
    tensors: Mapping[str, torch.Tensor], expected: Collection[str]
) -> dict[str, torch.Tensor]:
    """One block's `tensors`, with per-expert weights stacked if `expected` (the names the
    block's `state_dict` holds) names stacked ones; unchanged otherwise."""
    if not any(name.endswith("experts.gate_up_proj") for name in expected):
        return dict(tensors)
    renamed = not any(name.startswith(_MIXTRAL_MODULE) for name in expected)
    result: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name, tensor in tensors.items():
        if renamed and name.startswith(_MIXTRAL_MODULE):
            name = "mlp." + name.removeprefix(_MIXTRAL_MODULE)
        if match := _EXPERT.match(name):
            projections = experts.setdefault(match["experts"], {})
            projections.setdefault(match["projection"], {})[int(match["index"])] = tensor
        else:
            result[name] = tensor
    for prefix, projections in experts.items():
        gate, up, down = _names(prefix, projections)
        result[f"{prefix}.gate_up_proj"] = torch.cat(
            [_stack(prefix, gate, projections[gate]), _stack(prefix, up, projections[up])], dim=1
        )
        result[f"{prefix}.down_proj"] = _stack(prefix, down, projections[down])
    return result


def _names(prefix: str, projections: Mapping[str, object]) -> tuple[str, str, str]:
    for names in _GATE_UP_DOWN:
        if set(names) == set(projections):
            return names
    raise CheckpointError(
        f"{prefix}: expert projections {sorted(projections)} are not gate/up/down ones"
    )


def _stack(prefix: str, projection: str, by_index: Mapping[int, torch.Tensor]) -> torch.Tensor:
    if sorted(by_index) != list(range(len(by_index))):
        raise CheckpointError(f"{prefix}: {projection} is missing for some experts")
    return torch.stack([by_index[index] for index in range(len(by_index))])
