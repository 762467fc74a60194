"""LoRA adapters a peer serves over its blocks, chosen per request by name.

An adapter is a PEFT LoRA directory (`adapter_config.json` with `"peft_type": "LORA"`, and
`adapter_model.safetensors`) trained on the same base model; its name in the swarm is the
directory's name. `load_adapter` reads only the low-rank pairs of the span's blocks
(`base_model.model.<decoder>.<blocks>.N.<module>.lora_A.weight` and `lora_B`) and wraps each
linear layer they target (int8 ones too, and GPT-2's `Conv1D`, for which PEFT sets
`fan_in_fan_out`: it changes how PEFT merges, not what it computes) in a `LoraLinear`, which
adds `lora_B(lora_A(x)) * scale` (PEFT's `scale = lora_alpha / r`, or `/ sqrt(r)` with
rsLoRA) when a request names that adapter, and is the plain layer otherwise: a peer's base
outputs do not change when it loads adapters.

`Adapters.using(name)` selects the adapter of the request that runs (the compute thread runs
one at a time, so one selection serves every wrapped layer of the span). Anything the peer
cannot apply as PEFT would (weight-decomposed DoRA, biases, per-module ranks or alphas,
layers outside the blocks such as the embeddings or the LM head) is refused at load with
`AdapterError`, naming it.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from routing.announcement import MAX_ADAPTERS, MODEL_NAME_PATTERN

from .errors import AdapterError, UnknownAdapterError
from .int8_weights import Int8Linear, as_linear
from .span import Span

__all__ = ["Adapters", "LoraLinear", "load_adapter"]

logger = logging.getLogger(__name__)

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# PEFT settings that change what a LoRA layer computes, which a peer does not apply
_REFUSED_IF_SET = ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern",
                   "lora_bias")  # fmt: skip


@dataclass
class Adapters:
    """The adapters a span has, and the one in use by the request that runs now."""

    names: tuple[str, ...] = ()
    active: str | None = None

    def check(self, name: str | None) -> None:
        """`UnknownAdapterError` unless `name` is None or one of these."""
        if name is not None and name not in self.names:
            have = ", ".join(self.names) or "none"
            raise UnknownAdapterError(f"this peer has no adapter {name!r} (it has: {have})")

    @contextmanager
    def using(self, name: str | None) -> Iterator[None]:
        self.check(name)
        self.active = name
        try:
            yield
        finally:
            self.active = None


class LoraLinear(torch.nn.Module):
    """A block's linear layer, plus the low-rank update of the adapter in use, if it has one."""

    def __init__(
        self, base: torch.nn.Module, adapters: Adapters, features: tuple[int, int]
    ) -> None:
        super().__init__()
        self.base = base
        self.adapters = adapters
        self.features = features  # the base's inputs and outputs
        self.updates: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.base(hidden)
        update = self.updates.get(self.adapters.active or "")
        if update is None:
            return output
        down, up, scale = update
        return (
            output
            + torch.nn.functional.linear(torch.nn.functional.linear(hidden, down), up) * scale
        )


def _config(path: Path) -> tuple[int, float]:
    """The rank and the scale of a LoRA adapter directory's config."""
    try:
        config = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, ValueError) as error:
        raise AdapterError(f"cannot read {CONFIG_FILE} of adapter {path.name}: {error}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterError(f"adapter {path.name} is not a PEFT LoRA adapter")
    refused = [key for key in _REFUSED_IF_SET if config.get(key) not in (None, False, {}, [])]
    if config.get("bias", "none") != "none":
        refused.append("bias")
    if refused:
        raise AdapterError(f"adapter {path.name} sets what a peer cannot apply: {refused}")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if type(rank) is not int or rank < 1 or not isinstance(alpha, int | float):
        raise AdapterError(f"adapter {path.name} needs a rank 'r' >= 1 and a 'lora_alpha'")
    return rank, float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)


def load_adapter(path: str | Path, span: Span, adapters: Adapters) -> str:
    """Attach the adapter in `path` to the span's blocks; returns its name."""
    from safetensors import safe_open

    path = Path(path)
    name = path.name
    if not MODEL_NAME_PATTERN.match(name):  # names travel in announcements and requests
        raise AdapterError(f"an adapter's name (its directory's) cannot be {name!r}")
    if name in adapters.names:
        raise AdapterError(f"two adapters are named {name!r}")
    if len(adapters.names) >= MAX_ADAPTERS:
        raise AdapterError(f"a peer serves at most {MAX_ADAPTERS} adapters (its record lists them)")
    rank, scale = _config(path)
    family = span.family
    pattern = re.compile(
        rf"^base_model\.model\.{re.escape(family.decoder)}\.{family.blocks}\.(\d+)\.(.+)"
        r"\.lora_([AB])\.weight$"
    )
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    try:
        with safe_open(str(path / WEIGHTS_FILE), framework="pt") as handle:
            matches = {tensor: pattern.match(tensor) for tensor in handle.keys()}  # noqa: SIM118
            outside = [tensor for tensor, match in matches.items() if match is None]
            if outside:
                raise AdapterError(f"adapter {name} changes more than the blocks: {outside[:4]}")
            for tensor, match in matches.items():
                if match is not None and span.start <= int(match[1]) < span.end:
                    weight = handle.get_tensor(tensor).to(span.device, span.dtype)
                    pairs.setdefault((int(match[1]), match[2]), {})[match[3]] = weight
    except AdapterError:
        raise
    except Exception as error:  # SafetensorError, OSError
        raise AdapterError(f"cannot read {WEIGHTS_FILE} of adapter {name}: {error}") from None
    for (layer, module), pair in sorted(pairs.items()):
        _attach(span, layer, module, pair, scale, rank, adapters, name)
    adapters.names = (*adapters.names, name)
    logger.info(
        "adapter %s: %d layers of blocks %d..%d", name, len(pairs), span.start, span.end - 1
    )
    return name


def _attach(
    span: Span,
    layer: int,
    module: str,
    pair: dict[str, torch.Tensor],
    scale: float,
    rank: int,
    adapters: Adapters,
    name: str,
) -> None:
    """Wrap one linear layer of block `layer` (once) and give it the adapter's pair."""
    where = f"adapter {name}, block {layer}, {module}"
    if pair.keys() != {"A", "B"}:
        raise AdapterError(f"{where}: lora_A and lora_B come in pairs")
    *parents, leaf = module.split(".")
    parent: Any = span.layers[layer - span.start]
    try:
        for part in parents:
            parent = getattr(parent, part)
        target = getattr(parent, leaf)
    except AttributeError:
        raise AdapterError(f"{where}: the block has no such layer") from None
    if not isinstance(target, LoraLinear):
        linear = target if isinstance(target, Int8Linear) else as_linear(target)
        if linear is None:
            raise AdapterError(f"{where}: not a linear layer ({type(target).__name__})")
        target = LoraLinear(target, adapters, (linear.in_features, linear.out_features))
        setattr(parent, leaf, target)
    down, up = pair["A"], pair["B"]
    inputs, outputs = target.features
    if down.shape != (rank, inputs) or up.shape != (outputs, rank):
        raise AdapterError(
            f"{where}: lora_A {list(down.shape)} and lora_B {list(up.shape)} do not fit "
            f"[{rank}, {inputs}] and [{outputs}, {rank}]"
        )
    target.updates[name] = (down, up, scale)
