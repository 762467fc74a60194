"""LoRA adapters for tiny checkpoints, written as PEFT writes them, and the reference model:
the checkpoint's transformers model with the adapter merged into its weights."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from peer.int8_weights import as_linear

TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")


def write_lora(
    directory: Path,
    checkpoint: Path,
    *,
    targets: Sequence[str] = TARGETS,
    rank: int = 4,
    alpha: float = 8.0,
    seed: int = 0,
    **config: Any,
) -> Path:
    """A LoRA adapter of every block's `targets` (random A and B, so that it changes the
    outputs); `config` goes into `adapter_config.json` over PEFT's defaults."""
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in model.named_modules():
        linear = as_linear(module)  # GPT-2's Conv1D too
        if linear is not None and name.endswith(tuple(targets)):
            down = torch.randn(rank, linear.in_features, generator=generator) * 0.1
            up = torch.randn(linear.out_features, rank, generator=generator) * 0.1
            tensors[f"base_model.model.{name}.lora_A.weight"] = down
            tensors[f"base_model.model.{name}.lora_B.weight"] = up
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    settings = {
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.05,
        "target_modules": [t.rsplit(".", 1)[-1] for t in targets], "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
        "base_model_name_or_path": str(checkpoint), "task_type": "CAUSAL_LM",
    }  # fmt: skip
    (directory / "adapter_config.json").write_text(json.dumps({**settings, **config}))
    return directory


def merged_model(checkpoint: Path, adapter: Path) -> Any:
    """The transformers model of `checkpoint` with `adapter` merged: W + scale * B @ A."""
    from safetensors.torch import load_file

    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    config = json.loads((adapter / "adapter_config.json").read_text())
    rank = config["r"]
    scale = config["lora_alpha"] / (math.sqrt(rank) if config.get("use_rslora") else rank)
    tensors = load_file(adapter / "adapter_model.safetensors")
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, down in tensors.items():
            if name.endswith(".lora_A.weight"):
                path = name.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                up = tensors[name.replace("lora_A", "lora_B")]
                linear = as_linear(modules[path])  # GPT-2's Conv1D: a transposed view
                assert linear is not None
                linear.weight += scale * (up @ down)
    return model
