"""Random-weight checkpoints of any size, for tests and benchmarks (no model hub needed).

`write_random_checkpoint` writes a Hugging Face checkpoint directory (config.json plus
safetensors shards and index) for a config, without ever instantiating the model: names and
shapes come from a meta-device model, and tensors are generated one shard at a time, so a
1.1B-parameter checkpoint needs about one shard of memory. Values follow the usual init
(normal, std `initializer_range`; norms one, biases zero), so activations stay finite.
For small models, `model.save_pretrained` on `AutoModelForCausalLM.from_config` is simpler.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["write_random_checkpoint"]


def write_random_checkpoint(
    config: Any,
    directory: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    shard_bytes: int = 500 * 2**20,
    seed: int = 0,
) -> Path:
    """Write `config` with random weights in `dtype` to `directory`; returns the directory."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    auto: Any = AutoModelForCausalLM  # untyped classmethods
    with torch.device("meta"):
        skeleton = auto.from_config(config)
    shapes = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    std = float(getattr(config, "initializer_range", 0.02))
    generator = torch.Generator().manual_seed(seed)
    element = torch.empty((), dtype=dtype).element_size()

    groups: list[list[str]] = [[]]  # tensor names per shard, in state-dict order
    size = 0
    for name, shape in shapes.items():
        nbytes = element * int(torch.Size(shape).numel())
        if groups[-1] and size + nbytes > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    total = len(groups)
    weight_map: dict[str, str] = {}
    for index, names in enumerate(groups):
        file = f"model-{index + 1:05d}-of-{total:05d}.safetensors" if total > 1 else ""
        file = file or "model.safetensors"
        tensors = {name: _random(name, shapes[name], std, dtype, generator) for name in names}
        save_file(tensors, str(directory / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
        del tensors  # one shard in memory at a time
    if total > 1:
        total_size = sum(element * int(torch.Size(s).numel()) for s in shapes.values())
        index_data = {"metadata": {"total_size": total_size}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index_data, indent=1))
    config.save_pretrained(directory)
    return directory


def _random(
    name: str, shape: tuple[int, ...], std: float, dtype: torch.dtype, generator: torch.Generator
) -> torch.Tensor:
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape, generator=generator) * std).to(dtype)
