"""Checkpoints quantized to FP8 by blocks, dequantized as they are read.

DeepSeek V3, Kimi K2 and the FP8 releases of Qwen3 and GLM-4.5 store each linear layer's
weight in float8 (e4m3) and next to it `<name>.weight_scale_inv`: one float32 scale per block
of `weight_block_size` (128 x 128) of the weight, the last blocks of a row or a column cut
short where the weight's size is not a multiple. `config.json` says so under
`quantization_config` (`"quant_method": "fp8"`). A weight is its float8 values times its
blocks' scales, computed in float32 as transformers does when it dequantizes, then cast to the
peer's dtype: one tensor at a time, so a peer serves such a checkpoint in bfloat16 (or any
dtype, on any device) with the memory of that dtype. Other quantization methods are refused.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import torch

from .errors import CheckpointError, UnsupportedModelError

__all__ = ["DEFAULT_BLOCK", "SCALE_SUFFIX", "Fp8Pairs", "block_size", "dequantize"]

SCALE_SUFFIX = "_scale_inv"  # `x.weight` -> `x.weight_scale_inv`
DEFAULT_BLOCK = (128, 128)


def block_size(config: Mapping[str, Any]) -> tuple[int, int] | None:
    """The FP8 block of a parsed `config.json`; None if it is not quantized; an error for any
    quantization this module cannot undo."""
    quantization = config.get("quantization_config")
    if quantization is None:
        return None
    method = quantization.get("quant_method") if isinstance(quantization, Mapping) else None
    if method != "fp8":
        raise UnsupportedModelError(
            f"quantized checkpoints ({method!r}) are not supported, FP8 by blocks is; "
            "use the model's unquantized release"
        )
    block = quantization.get("weight_block_size") or DEFAULT_BLOCK
    if not (
        isinstance(block, (list, tuple))
        and len(block) == 2
        and all(type(size) is int and size > 0 for size in block)
    ):
        raise CheckpointError(f"weight_block_size must be two sizes, not {block!r}")
    return block[0], block[1]


def dequantize(
    name: str, weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]
) -> torch.Tensor:
    """The float32 weight: `weight` (float8) times the scale of the block each element is in."""
    rows, columns = weight.shape[-2:]
    grid = (-(-rows // block[0]), -(-columns // block[1]))
    if weight.dim() < 2 or tuple(scale_inv.shape[-2:]) != grid:
        raise CheckpointError(
            f"{name}: {tuple(scale_inv.shape)} scales do not fit a {tuple(weight.shape)} weight "
            f"in blocks of {block}"
        )
    scales = scale_inv.to(torch.float32)
    scales = scales.repeat_interleave(block[0], dim=-2).repeat_interleave(block[1], dim=-1)
    return weight.to(torch.float32) * scales[..., :rows, :columns]


class Fp8Pairs:
    """Pairs FP8 weights with their scales as a read yields them, in either order (they may
    lie in different shards), and hands out each weight dequantized once both are in."""

    def __init__(self, weights: Collection[str], block: tuple[int, int]) -> None:
        self._weights = set(weights)
        self._block = block
        self._waiting: dict[str, torch.Tensor] = {}

    @property
    def scales(self) -> list[str]:
        """The names of the scales to read along."""
        return [weight + SCALE_SUFFIX for weight in self._weights]

    def take(self, name: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        """`(name, tensor)` for a tensor of no pair; `(weight, dequantized)` for the second of
        a pair; None for the first."""
        weight = name.removesuffix(SCALE_SUFFIX)
        if weight not in self._weights:
            return name, tensor
        other = weight + SCALE_SUFFIX if name == weight else weight
        if other not in self._waiting:
            self._waiting[name] = tensor
            return None
        first = self._waiting.pop(other)
        quantized, scales = (tensor, first) if name == weight else (first, tensor)
        return weight, dequantize(weight, quantized, scales, self._block)
