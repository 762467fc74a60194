"""Quantized checkpoints made from float ones: FP8 by blocks, as DeepSeek V3 ships, and
MXFP4 experts, as gpt-oss ships; and the reference for int8 peers: the model whose block
weights are their int8-rounded ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

BLOCK = (8, 8)  # divides every size of the tiny models (transformers' dequantizer needs that)


def quantize_fp8(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """float8 values and one scale per block (the last blocks may be cut short)."""
    rows, columns = weight.shape
    grid = (-(-rows // block[0]), -(-columns // block[1]))
    scales = torch.empty(grid)
    quantized = torch.empty(rows, columns, dtype=torch.float8_e4m3fn)
    for i in range(grid[0]):
        for j in range(grid[1]):
            part = (
                slice(i * block[0], (i + 1) * block[0]),
                slice(j * block[1], (j + 1) * block[1]),
            )
            scales[i, j] = weight[part].abs().max().clamp(min=1e-12) / 448.0
            quantized[part] = (weight[part] / scales[i, j]).to(torch.float8_e4m3fn)
    return quantized, scales


def to_fp8(path: Path, block: tuple[int, int] = BLOCK) -> Path:
    """Quantize every linear weight of the blocks, as DeepSeek V3 ships (routers, norms,
    embeddings and LM head stay as they are)."""
    tensors = load_file(path / "model.safetensors")
    for name in [n for n in tensors if n.startswith("model.layers.")]:
        if tensors[name].dim() == 2 and not name.endswith(("norm.weight", "mlp.gate.weight")):
            tensors[name], tensors[name + "_scale_inv"] = quantize_fp8(tensors[name], block)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {
        **{"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic"},
        "weight_block_size": list(block),
    }
    (path / "config.json").write_text(json.dumps(config))
    return path


FP4_VALUES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])


def _quantize_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[experts, in, out]` -> blocks `[experts, out, in / 32, 16]` and their exponents."""
    rows = weight.transpose(1, 2)  # [experts, out, in]
    groups = rows.reshape(*rows.shape[:2], -1, 32)
    amax = groups.abs().amax(-1).clamp(min=1e-30)
    exponents = torch.ceil(torch.log2(amax / 6.0)).to(torch.int32)
    scaled = groups / torch.exp2(exponents.float())[..., None]
    nearest = (scaled.abs()[..., None] - FP4_VALUES).abs().argmin(-1)  # index 0..7
    codes = (nearest + 8 * (scaled < 0)).to(torch.uint8)  # the sign is the high bit
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks, (exponents + 127).to(torch.uint8)


def to_mxfp4(path: Path) -> Path:
    """Quantize the experts of every block to MXFP4, as gpt-oss ships."""
    tensors = load_file(path / "model.safetensors")
    for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        tensors[name + "_blocks"], tensors[name + "_scales"] = _quantize_mxfp4(tensors.pop(name))
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4"}
    (path / "config.json").write_text(json.dumps(config))
    return path


def dequantized_int8_model(path: Path, dtype: torch.dtype, lora: Path | None = None) -> Any:
    """The checkpoint's transformers model in `dtype`, every linear layer of its blocks given
    the weight an int8 peer multiplies by (a LoRA adapter's update merged first, if given)."""
    from transformers import AutoModelForCausalLM

    from peer.int8_weights import Int8Linear, as_linear
    from tests.support.lora import merged_model

    model = merged_model(path, lora) if lora else AutoModelForCausalLM.from_pretrained(path)
    model = model.to(dtype).eval()
    blocks = getattr(getattr(model, "model", None), "layers", None) or model.transformer.h
    with torch.no_grad():
        for module in blocks.modules():
            if (linear := as_linear(module)) is not None:  # GPT-2's Conv1D: a transposed view
                linear.weight.copy_(Int8Linear(linear).dequantized())
    return model
