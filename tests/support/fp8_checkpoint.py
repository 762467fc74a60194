"""An FP8 checkpoint quantized by blocks, as DeepSeek V3 ships, made from a float one."""

from __future__ import annotations

import json
from pathlib import Path

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
