"""Quantized checkpoints, dequantized as they are read: FP8 by blocks, and MXFP4.

- FP8 by blocks (`"quant_method": "fp8"`: DeepSeek V3, Kimi K2, the FP8 releases of Qwen3 and
  GLM-4.5): a linear layer's weight in float8 (e4m3), and next to it `<name>_scale_inv`, one
  float32 scale per block of `weight_block_size` (128 x 128) of the weight, the last blocks of
  a row or a column cut short where its size is not a multiple (as DeepSeek's own code reads
  them). The weight is its values times their block's scale, in float32 as transformers
  computes it.
- MXFP4 (`"quant_method": "mxfp4"`: gpt-oss's experts): `<name>_blocks`, 4-bit floats (e2m1)
  two to a byte, the low nibble first, in groups of 32 along each row of `[experts, out, in]`,
  and `<name>_scales`, one power of two per group (a byte, biased by 127). The weight is the
  values times their group's power of two, transposed to transformers' `[experts, in, out]`.

Either way a weight comes out of its pair of stored tensors once both are read
(`QuantizedPairs`), in the peer's dtype (MXFP4 one expert at a time), so a peer serves such
a checkpoint in bfloat16 (or any dtype, on any device) with the memory of that dtype. Other
quantization methods are refused.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from .errors import CheckpointError, UnsupportedModelError

__all__ = [
    "Quantization",
    "QuantizedPairs",
    "dequantize_fp8",
    "dequantize_mxfp4",
    "quantization",
]

DEFAULT_BLOCK = (128, 128)
FP4_VALUES = (
    0.0,
    0.5,
    1.0,
    1.5,
    2.0,
    3.0,
    4.0,
    6.0,
    -0.0,
    -0.5,
    -1.0,
    -1.5,
    -2.0,
    -3.0,
    -4.0,
    -6.0,
)


@dataclass(frozen=True)
class Quantization:
    """How a checkpoint stores its quantized weights."""

    method: str  # "fp8" or "mxfp4"
    block: tuple[int, int] = DEFAULT_BLOCK  # FP8's

    @property
    def suffixes(self) -> tuple[str, str]:
        """What the stored values and scales add to the weight's name."""
        return ("", "_scale_inv") if self.method == "fp8" else ("_blocks", "_scales")

    def weight_of(self, name: str) -> str:
        """The weight a stored tensor is part of (its own name if it is no part of one)."""
        values, scales = self.suffixes
        if name.endswith(scales):
            return name.removesuffix(scales)
        return name.removesuffix(values) if values else name

    def dequantize(
        self, name: str, values: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        if self.method == "fp8":
            return dequantize_fp8(name, values, scales, self.block).to(dtype)
        return dequantize_mxfp4(name, values, scales, dtype)


def quantization(config: Mapping[str, Any]) -> Quantization | None:
    """How a parsed `config.json` says its weights are quantized; None if they are not; an
    error for a quantization this module cannot undo."""
    settings = config.get("quantization_config")
    if settings is None:
        return None
    method = settings.get("quant_method") if isinstance(settings, Mapping) else None
    if method == "mxfp4":
        return Quantization("mxfp4")
    if method != "fp8":
        raise UnsupportedModelError(
            f"quantized checkpoints ({method!r}) are not supported, FP8 by blocks and MXFP4 "
            "are; use the model's unquantized release"
        )
    block = settings.get("weight_block_size") or DEFAULT_BLOCK
    if not (
        isinstance(block, (list, tuple))
        and len(block) == 2
        and all(type(size) is int and size > 0 for size in block)
    ):
        raise CheckpointError(f"weight_block_size must be two sizes, not {block!r}")
    return Quantization("fp8", (block[0], block[1]))


def dequantize_fp8(
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


def dequantize_mxfp4(
    name: str, blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The weight `[experts, in, out]` of `blocks` (`[experts, out, groups, 16]` bytes) and
    `scales` (`[experts, out, groups]` biased exponents), in `dtype`: computed one expert at a
    time in float32 (exact: 4-bit values times powers of two), so that a layer's experts cost
    their size in `dtype` plus one expert's."""
    if (
        blocks.dtype != torch.uint8
        or blocks.dim() != 4
        or tuple(blocks.shape[:-1]) != tuple(scales.shape)
    ):
        raise CheckpointError(
            f"{name}: MXFP4 blocks {tuple(blocks.shape)} ({blocks.dtype}) do not fit scales "
            f"{tuple(scales.shape)}"
        )
    table = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)
    experts, rows, groups, _ = blocks.shape
    weight = torch.empty((experts, groups * 32, rows), dtype=dtype, device=blocks.device)
    for expert in range(experts):
        packed = blocks[expert]
        values = torch.stack([table[(packed & 0x0F).long()], table[(packed >> 4).long()]], -1)
        exponents = scales[expert].to(torch.int32)[..., None] - 127
        values = torch.ldexp(values.flatten(-2), exponents)  # [out, groups, 32]
        weight[expert] = values.flatten(-2).T
    return weight


class QuantizedPairs:
    """Pairs each quantized weight's stored values and scales as a read yields them, in
    either order (they may lie in different shards), and hands the weight out, dequantized,
    once both are in. `names`: the stored tensors asked for; `files`: every stored tensor."""

    def __init__(
        self, names: Collection[str], files: Collection[str], quantization: Quantization | None
    ) -> None:
        self._quantization = quantization
        self._weights: set[str] = set()
        if quantization is not None:
            values, scales = quantization.suffixes
            candidates = {quantization.weight_of(name) for name in names}
            self._weights = {w for w in candidates if w + values in files and w + scales in files}
        self._waiting: dict[str, torch.Tensor] = {}

    @property
    def stored(self) -> list[str]:
        """The names of the stored tensors to read for the weights."""
        if self._quantization is None:
            return []
        values, scales = self._quantization.suffixes
        return [weight + suffix for weight in sorted(self._weights) for suffix in (values, scales)]

    def take(
        self, name: str, tensor: torch.Tensor, dtype: torch.dtype | None = None
    ) -> tuple[str, torch.Tensor] | None:
        """`(name, tensor)` for a tensor of no pair; `(weight, dequantized)` (in `dtype`, else
        float32) for the second of a pair; None for the first."""
        quantization = self._quantization
        if quantization is None or (weight := quantization.weight_of(name)) not in self._weights:
            return name, tensor
        values, scales = quantization.suffixes
        is_scales = name == weight + scales
        other = weight + (values if is_scales else scales)
        if other not in self._waiting:
            self._waiting[name] = tensor
            return None
        first = self._waiting.pop(other)
        stored_values, stored_scales = (first, tensor) if is_scales else (tensor, first)
        dequantized = quantization.dequantize(
            weight, stored_values, stored_scales, dtype or torch.float32
        )
        return weight, dequantized
