"""Mixture-of-experts weights: one tensor per expert on disk, stacked tensors in transformers 5.

MoE checkpoints (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) store every expert's projections
apart, as they were published: `mlp.experts.3.gate_proj.weight`, or Mixtral's
`block_sparse_moe.experts.3.w1.weight`. transformers 5 runs a block's experts from two stacked
tensors, `mlp.experts.gate_up_proj` (experts x 2*intermediate x hidden: each expert's gate rows,
then its up rows) and `mlp.experts.down_proj` (experts x hidden x intermediate), and converts
when it loads a whole model. A peer loads one block at a time, so `stack_experts` does that
conversion for one block, in place, and only when the block expects stacked tensors
(transformers 4 keeps one module per expert), so the same checkpoint serves under either
version.
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


def stack_experts(tensors: dict[str, torch.Tensor], expected: Collection[str]) -> None:
    """Stack one block's per-expert weights in `tensors`, in place, if `expected` (the names
    the block's `state_dict` holds) names stacked ones. Each expert's tensor leaves `tensors`
    as it is copied, so loading a block takes its stacked experts plus one expert's memory."""
    if not any(name.endswith("experts.gate_up_proj") for name in expected):
        return
    renamed = not any(name.startswith(_MIXTRAL_MODULE) for name in expected)
    experts: dict[str, dict[str, dict[int, torch.Tensor]]] = {}
    for name in list(tensors):
        new_name = name
        if renamed and name.startswith(_MIXTRAL_MODULE):
            new_name = "mlp." + name.removeprefix(_MIXTRAL_MODULE)
        if match := _EXPERT.match(new_name):
            projections = experts.setdefault(match["experts"], {})
            projections.setdefault(match["projection"], {})[int(match["index"])] = tensors.pop(name)
        elif new_name != name:
            tensors[new_name] = tensors.pop(name)
    for prefix, projections in experts.items():
        gate, up, down = _names(prefix, projections)
        tensors[f"{prefix}.gate_up_proj"] = _stack(prefix, [gate, up], projections)
        tensors[f"{prefix}.down_proj"] = _stack(prefix, [down], projections)


def _names(prefix: str, projections: Mapping[str, object]) -> tuple[str, str, str]:
    for names in _GATE_UP_DOWN:
        if set(names) == set(projections):
            return names
    raise CheckpointError(
        f"{prefix}: expert projections {sorted(projections)} are not gate/up/down ones"
    )


def _stack(
    prefix: str, parts: list[str], projections: dict[str, dict[int, torch.Tensor]]
) -> torch.Tensor:
    """`[experts, rows of every part, columns]`: each expert's `parts` one under the other."""
    count = len(projections[parts[0]])
    for part in parts:
        if sorted(projections[part]) != list(range(count)):
            raise CheckpointError(f"{prefix}: {part} is missing for some experts")
    first = [projections[part][0] for part in parts]
    rows = sum(tensor.shape[0] for tensor in first)
    stacked = first[0].new_empty((count, rows, *first[0].shape[1:]))
    for index in range(count):
        row = 0
        for part in parts:
            tensor = projections[part].pop(index)  # freed once copied
            stacked[index, row : row + tensor.shape[0]] = tensor
            row += tensor.shape[0]
    return stacked
